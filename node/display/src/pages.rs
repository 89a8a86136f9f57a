//! The pages, compiled into the binary (`include_str!`): plain HTML, CSS and JavaScript with no build
//! step and nothing fetched from the internet, so they work on a track with no uplink.
//!
//! Every page uses `assets/live.js`: it opens the live stream, keeps the highest seq it has seen, and
//! on any drop reconnects by itself with `from=<that seq>`, so a WiFi drop loses nothing on screen.

use std::sync::Arc;

use axum::Router;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::Display;

/// Each page: its path, its file, and its content type.
const PAGES: [(&str, &str, &str); 9] = [
    (
        "/",
        include_str!("../assets/index.html"),
        "text/html; charset=utf-8",
    ),
    (
        "/board",
        include_str!("../assets/board.html"),
        "text/html; charset=utf-8",
    ),
    (
        "/moto",
        include_str!("../assets/moto.html"),
        "text/html; charset=utf-8",
    ),
    (
        "/announcer",
        include_str!("../assets/announcer.html"),
        "text/html; charset=utf-8",
    ),
    (
        "/control",
        include_str!("../assets/control.html"),
        "text/html; charset=utf-8",
    ),
    (
        "/tech",
        include_str!("../assets/tech.html"),
        "text/html; charset=utf-8",
    ),
    (
        "/assets/live.js",
        include_str!("../assets/live.js"),
        "text/javascript; charset=utf-8",
    ),
    (
        "/assets/style.css",
        include_str!("../assets/style.css"),
        "text/css; charset=utf-8",
    ),
    ("/favicon.ico", "", "image/x-icon"),
];

pub fn routes() -> Router<Arc<Display>> {
    let mut router = Router::new();
    for (path, body, content_type) in PAGES {
        router = router.route(path, get(move || page(body, content_type)));
    }
    router
}

async fn page(body: &'static str, content_type: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            // Pages change only with the binary; a screen refetches them after an update.
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}
