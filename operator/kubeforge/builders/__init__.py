"""Pure functions from a validated spec (+ operator settings) to the desired child objects. No I/O."""
