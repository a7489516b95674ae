"""The main job's machinery: plan the points of a sweep, measure each, record it, and finish with a report."""
