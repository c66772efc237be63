"""What runs inside the Ray job: the driver and one module per stage kind."""
