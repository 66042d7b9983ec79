"""The HTTP door: probes now, REST/JSON transcoding of the gRPC API later."""
