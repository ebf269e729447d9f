//! Image stores other than a local directory: an S3 bucket on a real S3 server.
