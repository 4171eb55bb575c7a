"""An S3-compatible object store served on the platform's own endpoint.

Modules, one job each:
- ``routing``: which AWS service a request is for (the SigV4 credential scope) and which S3
  operation a path-style request names.
- ``errors``: S3's error codes and their XML shape.
- ``xml``: the few XML documents S3 reads and writes.
- ``chunked``: decoding ``Content-Encoding: aws-chunked`` bodies and their trailers.
- ``checksums``: Content-MD5 and ``x-amz-checksum-*`` verification.
- ``store``: buckets, objects and multipart uploads: metadata in the platform's SQLite, bytes
  in files named by id under the state directory (never by key, so no key can escape it).
- ``body``: streaming a request body to a temporary file while hashing and verifying it.
- ``handlers``: the operations, as ASGI handlers.
- ``access``: what other platform parts use to read and write objects, embedded or external.
"""
