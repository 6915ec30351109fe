"""schemathesis hooks for the OpenAPI test: binary bodies of the protobuf media types are sent as they are.

schemathesis serializes only the media types it knows; a route that takes nothing but protobuf
(Prometheus remote_write) is documented as ``application/x-protobuf`` with a binary schema.
"""

import schemathesis

schemathesis.serializer.alias("application/x-protobuf", "application/octet-stream")
