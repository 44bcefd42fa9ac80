"""`rhd model-server`: the embedded TensorFlow Serving gRPC API (Predict, GetModelMetadata, GetModelStatus, health)
over the models/<name>/<version>/ tree, with TF Serving's config files. Production runs tensorflow/serving itself;
the stages' client (rhd.runtime.model_client) cannot tell them apart."""
