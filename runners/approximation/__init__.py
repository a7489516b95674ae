"""How far each variant is from exact softmax attention: its effective matrix, error metrics, inputs."""
