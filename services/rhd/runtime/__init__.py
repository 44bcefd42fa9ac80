"""The only code that knows Kafka, protobuf wiring, settings, metrics, health, blobs and the model server."""
