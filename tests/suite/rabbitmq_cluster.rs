//! RabbitMQ as a three-node cluster: a node stopped during uploads.
