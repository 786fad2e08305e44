//! An S3 client of the gateway for the tests: object_store's (what Rust
//! programs and DatenLord's own store use), path-style over HTTP.

/// A client of bucket `bucket` at the gateway on `addr`, with the key
/// `access`/`secret`, and a runtime to drive it.
pub fn client(
    addr: &str,
    bucket: &str,
    access: &str,
    secret: &str,
) -> (object_store::aws::AmazonS3, tokio::runtime::Runtime) {
    let store = object_store::aws::AmazonS3Builder::new()
        .with_endpoint(format!("http://{addr}"))
        .with_allow_http(true)
        .with_bucket_name(bucket)
        .with_region("us-east-1")
        .with_access_key_id(access)
        .with_secret_access_key(secret)
        .with_virtual_hosted_style_request(false)
        .build()
        .expect("store");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    (store, runtime)
}
