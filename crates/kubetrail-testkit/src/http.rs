//! Reading a page over HTTP (a `/metrics` page, a probe) in tests of the receiver and of the
//! binaries alike: one place that fails the test, naming the URL, when the request fails.

/// The body of a GET of `url` with `http`, failing the test on any error (the status is not
/// checked: the caller asserts on what it expects).
pub async fn get_text(http: &reqwest::Client, url: &str) -> String {
    http.get(url)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
        .text()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
}
