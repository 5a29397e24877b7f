"""The only modules that do I/O: the Kubernetes API and the object store."""
