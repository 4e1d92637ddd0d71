"""Pure reducers: observed children in, a typed status out."""
