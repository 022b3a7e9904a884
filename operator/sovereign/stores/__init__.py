"""All object-store I/O (boto3, any S3-compatible endpoint). Called by ``services`` and the loader."""
