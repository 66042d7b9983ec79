"""The gRPC door: the grpc.aio server with health checking and reflection."""
