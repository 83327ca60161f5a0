"""The gpuproxy broker: a gRPC server that keeps C2 tasks and their payloads."""
