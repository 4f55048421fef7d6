"""Document formats: strict JSON and RFC 8785, content IDs, the models of every document,
the object layout, time. Imports nothing else of kristal but `errors`."""
