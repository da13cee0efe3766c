"""The model registry in S3: immutable versions, the champion pointer and the promotion history."""
