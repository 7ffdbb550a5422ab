"""Generated gRPC stubs (python -m grpc_tools.protoc, see scripts/bootstrap.sh).
The .proto under proto/enforcer/v1/ is the source of truth; the *_pb2*.py files
here are build products and are not committed."""
