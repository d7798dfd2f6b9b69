//! Pushing blobs and manifests over the distribution API through any
//! [`Transport`]: chunked uploads (POST, PATCH…, PUT `?digest=`), so memory use
//! stays at one chunk whatever the layer size.

use super::distribution::{status_error, DistError, Transport, QUERY_VALUE};
use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use tokio::io::{AsyncRead, AsyncReadExt};

/// Bytes per upload request.
pub const CHUNK: usize = 8 * 1024 * 1024;

/// Pushes into one repository of a registry.
pub struct Pusher<'a> {
    transport: &'a dyn Transport,
    repo: String,
    /// `ns` query parameter: the upstream registry when pushing into a mirror.
    ns: Option<String>,
}

fn with_query(uri: &str, key: &str, value: &str) -> String {
    let sep = if uri.contains('?') { '&' } else { '?' };
    let v = percent_encoding::utf8_percent_encode(value, QUERY_VALUE);
    format!("{uri}{sep}{key}={v}")
}

async fn send(
    t: &dyn Transport,
    method: Method,
    uri: &str,
    headers: &[(header::HeaderName, String)],
    body: Bytes,
) -> Result<Response<Bytes>, DistError> {
    let mut req = Request::builder().method(method).uri(uri);
    for (k, v) in headers {
        req = req.header(k, v);
    }
    let req = req
        .body(body)
        .map_err(|e| DistError::Protocol(format!("{uri}: {e}")))?;
    t.send(req).await
}

fn expect(
    resp: &Response<Bytes>,
    method: &Method,
    uri: &str,
    ok: &[StatusCode],
) -> Result<(), DistError> {
    if ok.contains(&resp.status()) {
        Ok(())
    } else if resp.status() == StatusCode::UNAUTHORIZED {
        Err(DistError::Unauthorized(format!("{method} {uri}")))
    } else {
        Err(status_error(method, uri, resp.status(), resp.body()))
    }
}

fn location(resp: &Response<Bytes>, uri: &str) -> Result<String, DistError> {
    resp.headers()
        .get(header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .ok_or_else(|| DistError::Protocol(format!("{uri}: upload response has no Location")))
}

impl<'a> Pusher<'a> {
    /// Push into `repo` (e.g. `library/busybox`), with `ns` when the target is a mirror.
    pub fn new(transport: &'a dyn Transport, repo: &str, ns: Option<&str>) -> Pusher<'a> {
        Pusher {
            transport,
            repo: repo.to_string(),
            ns: ns.map(str::to_string),
        }
    }

    fn uri(&self, tail: &str) -> String {
        let u = format!("/v2/{}/{tail}", self.repo);
        match &self.ns {
            Some(ns) => with_query(&u, "ns", ns),
            None => u,
        }
    }

    /// Whether the registry has the blob.
    pub async fn has_blob(&self, digest: &str) -> Result<bool, DistError> {
        let uri = self.uri(&format!("blobs/{digest}"));
        let r = send(self.transport, Method::HEAD, &uri, &[], Bytes::new()).await?;
        match r.status() {
            s if s.is_success() => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            _ => expect(&r, &Method::HEAD, &uri, &[]).map(|_| false),
        }
    }

    /// Upload a blob of `size` bytes read from `reader`, unless the registry has it.
    /// Returns whether bytes were sent.
    pub async fn push_blob(
        &self,
        digest: &str,
        size: u64,
        mut reader: impl AsyncRead + Unpin + Send,
    ) -> Result<bool, DistError> {
        if self.has_blob(digest).await? {
            return Ok(false);
        }
        let start = self.uri("blobs/uploads/");
        let r = send(self.transport, Method::POST, &start, &[], Bytes::new()).await?;
        expect(&r, &Method::POST, &start, &[StatusCode::ACCEPTED])?;
        let mut loc = location(&r, &start)?;
        let mut sent = 0u64;
        let mut buf = vec![0u8; CHUNK];
        loop {
            let mut n = 0;
            while n < CHUNK {
                let k = reader.read(&mut buf[n..]).await?;
                if k == 0 {
                    break;
                }
                n += k;
            }
            let chunk = Bytes::copy_from_slice(&buf[..n]);
            let last = sent + n as u64 >= size || n < CHUNK;
            if last {
                // The final chunk travels with the closing PUT: one request for small blobs.
                let uri = with_query(&loc, "digest", digest);
                let r = send(
                    self.transport,
                    Method::PUT,
                    &uri,
                    &[(header::CONTENT_TYPE, "application/octet-stream".to_string())],
                    chunk,
                )
                .await?;
                expect(&r, &Method::PUT, &uri, &[StatusCode::CREATED])?;
                sent += n as u64;
                if sent != size {
                    return Err(DistError::Protocol(format!(
                        "blob {digest}: read {sent} bytes, expected {size}"
                    )));
                }
                return Ok(true);
            }
            let range = format!("{}-{}", sent, sent + n as u64 - 1);
            let r = send(
                self.transport,
                Method::PATCH,
                &loc,
                &[
                    (header::CONTENT_TYPE, "application/octet-stream".to_string()),
                    (header::CONTENT_RANGE, range),
                ],
                chunk,
            )
            .await?;
            expect(
                &r,
                &Method::PATCH,
                &loc,
                &[StatusCode::ACCEPTED, StatusCode::NO_CONTENT],
            )?;
            loc = location(&r, &loc)?;
            sent += n as u64;
        }
    }

    /// Upload a manifest under `reference` (a tag or its digest).
    pub async fn push_manifest(
        &self,
        reference: &str,
        media_type: &str,
        bytes: Bytes,
    ) -> Result<(), DistError> {
        let uri = self.uri(&format!("manifests/{reference}"));
        let r = send(
            self.transport,
            Method::PUT,
            &uri,
            &[(header::CONTENT_TYPE, media_type.to_string())],
            bytes,
        )
        .await?;
        expect(
            &r,
            &Method::PUT,
            &uri,
            &[StatusCode::CREATED, StatusCode::OK],
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::future::BoxFuture;
    use std::sync::Mutex;

    /// Method, URI, body length and Content-Range of one request.
    type Seen = (Method, String, usize, Option<String>);

    /// Records requests and answers like a registry that has no blobs.
    #[derive(Default)]
    struct Fake {
        seen: Mutex<Vec<Seen>>,
    }

    impl Transport for Fake {
        fn send(&self, req: Request<Bytes>) -> BoxFuture<'_, Result<Response<Bytes>, DistError>> {
            let range = req
                .headers()
                .get(header::CONTENT_RANGE)
                .map(|v| v.to_str().unwrap().to_string());
            self.seen.lock().unwrap().push((
                req.method().clone(),
                req.uri().to_string(),
                req.body().len(),
                range,
            ));
            let status = match *req.method() {
                Method::HEAD => StatusCode::NOT_FOUND,
                Method::POST | Method::PATCH => StatusCode::ACCEPTED,
                _ => StatusCode::CREATED,
            };
            let n = self.seen.lock().unwrap().len();
            let resp = Response::builder()
                .status(status)
                .header(header::LOCATION, format!("/v2/r/blobs/uploads/u?state={n}"))
                .body(Bytes::new())
                .unwrap();
            Box::pin(async move { Ok(resp) })
        }
    }

    #[tokio::test]
    async fn large_blobs_go_in_chunks_and_small_in_one_put() {
        let t = Fake::default();
        let p = Pusher::new(&t, "r", Some("ghcr.io"));
        let data = vec![7u8; CHUNK + 10];
        let d = super::super::digest_of(&data);
        assert!(p.push_blob(&d, data.len() as u64, &data[..]).await.unwrap());
        let seen = t.seen.lock().unwrap().clone();
        let methods: Vec<&Method> = seen.iter().map(|s| &s.0).collect();
        assert_eq!(
            methods,
            vec![&Method::HEAD, &Method::POST, &Method::PATCH, &Method::PUT]
        );
        assert!(seen[1].1.ends_with("?ns=ghcr.io"));
        assert_eq!(seen[2].2, CHUNK);
        assert_eq!(seen[2].3.as_deref(), Some(&*format!("0-{}", CHUNK - 1)));
        // The PUT goes to the Location from the PATCH, with the digest and the rest.
        assert!(seen[3]
            .1
            .starts_with("/v2/r/blobs/uploads/u?state=3&digest=sha256%3A"));
        assert_eq!(seen[3].2, 10);

        let t = Fake::default();
        let p = Pusher::new(&t, "r", None);
        assert!(p.push_blob(&d, 3, &b"abc"[..]).await.unwrap());
        assert_eq!(t.seen.lock().unwrap().len(), 3);
    }
}
