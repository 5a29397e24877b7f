"""The serving image: ``modelloop-server`` (HTTP model server) and ``modelloop-sidecar`` (reload sidecar).

Both run in every serving Pod and share the model directory (an emptyDir): the sidecar writes
verified versions into it, the server loads them when the sidecar asks.
"""
