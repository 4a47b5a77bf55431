//! The HTTP library's floor, for `bench/small.sh`: hyper answering a 279-byte file with the headers
//! of a warm `/resolve/` answer, from memory, and nothing else (no routing, limits, logs or metrics).
//! `hyper_floor axum` puts an axum router with one fallback handler in between.
use std::convert::Infallible;

use bytes::Bytes;
use http::{HeaderValue, Response};
use hyper_util::rt::TokioIo;

#[tokio::main]
async fn main() {
    let mode = std::env::args().nth(1).unwrap_or_else(|| "hyper".into());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    println!("node floor http://{}", listener.local_addr().unwrap());
    let body = Bytes::from(vec![b'x'; 279]);
    let answer = move || {
        let mut response = Response::new(axum::body::Body::from(body.clone()));
        let headers = response.headers_mut();
        headers.insert("x-repo-commit", HeaderValue::from_static("0123456789abcdef0123456789abcdef01234567"));
        headers.insert("etag", HeaderValue::from_static("\"0123456789abcdef0123456789abcdef01234567\""));
        headers.insert("x-linked-etag", HeaderValue::from_static("\"0123456789abcdef0123456789abcdef01234567\""));
        headers.insert("x-linked-size", HeaderValue::from_static("279"));
        headers.insert("accept-ranges", HeaderValue::from_static("bytes"));
        headers.insert("content-type", HeaderValue::from_static("application/json"));
        headers.insert("content-length", HeaderValue::from_static("279"));
        headers.insert("x-cache", HeaderValue::from_static("HIT"));
        response
    };
    let router = axum::Router::new().fallback({
        let answer = answer.clone();
        move || std::future::ready(answer())
    });
    loop {
        let (stream, _) = listener.accept().await.unwrap();
        stream.set_nodelay(true).unwrap();
        let (answer, router, mode) = (answer.clone(), router.clone(), mode.clone());
        tokio::spawn(async move {
            let io = TokioIo::new(stream);
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder.writev(true).keep_alive(true);
            if mode == "axum" {
                let service = hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                    tower::ServiceExt::oneshot(router.clone(), request.map(axum::body::Body::new))
                });
                let _ = builder.serve_connection(io, service).await;
            } else {
                let service = hyper::service::service_fn(move |_request| std::future::ready(Ok::<_, Infallible>(answer())));
                let _ = builder.serve_connection(io, service).await;
            }
        });
    }
}
