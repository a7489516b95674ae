"""The comparison report: tables and plots built with pandas and matplotlib from the results store."""
