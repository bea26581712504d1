//! The demo upstream `atb dev` starts: an HTTP service that answers every
//! request with what it received, so a walk-through shows exactly what the
//! broker forwards (and what it strips).

use std::net::SocketAddr;

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};

async fn echo(req: HttpRequest, body: web::Bytes) -> HttpResponse {
    let headers: serde_json::Map<String, serde_json::Value> = req
        .headers()
        .iter()
        .filter_map(|(k, v)| Some((k.as_str().to_owned(), v.to_str().ok()?.into())))
        .collect();
    HttpResponse::Ok().json(serde_json::json!({
        "service": "atb-demo-upstream",
        "method": req.method().as_str(),
        "path": req.path(),
        "query": req.query_string(),
        "headers": headers,
        "body_bytes": body.len(),
    }))
}

/// Starts the demo upstream on `addr`; the returned server runs until stopped.
pub fn start(addr: SocketAddr) -> std::io::Result<actix_web::dev::Server> {
    Ok(
        HttpServer::new(|| App::new().default_service(web::to(echo)))
            .workers(1)
            .disable_signals()
            .bind(addr)?
            .run(),
    )
}
