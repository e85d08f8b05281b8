"""Schemathesis hooks for the hub's API: the batch envelope's media type is
sent as opaque bytes (it is a binary format schemathesis cannot build)."""
import schemathesis

schemathesis.serializer.alias("application/vnd.iot-pipeline.batch", "application/octet-stream")
