//! The web console's files, compiled into the binary: `GET /` is the page,
//! `GET /console/{file}` its scripts, style sheet and map. Plain HTML, CSS
//! and JavaScript modules that call this same API (docs/console.md says
//! why there is no build step). The data comes only from the API routes, so
//! these answers may be cached; the security headers are added by the guard.
//!
//! Not here: sessions (`session`), data (the API routes).

use axum::extract::Path;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

/// Every file: name, media type, contents.
const FILES: &[(&str, &str, &[u8])] = &[
    (
        "index.html",
        "text/html; charset=utf-8",
        include_bytes!("../../console/index.html"),
    ),
    (
        "console.css",
        "text/css; charset=utf-8",
        include_bytes!("../../console/console.css"),
    ),
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../console/app.js"),
    ),
    (
        "api.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../console/api.js"),
    ),
    (
        "report.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../console/report.js"),
    ),
    (
        "national.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../console/national.js"),
    ),
    (
        "operator.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../console/operator.js"),
    ),
    (
        "sweden.svg",
        "image/svg+xml",
        include_bytes!("../../console/sweden.svg"),
    ),
];

fn file(name: &str) -> Response {
    match FILES.iter().find(|(n, _, _)| *n == name) {
        Some((_, media, body)) => (
            [
                (header::CONTENT_TYPE, *media),
                // Code, not data: the browser may keep it but must ask first.
                (header::CACHE_CONTROL, "no-cache"),
            ],
            *body,
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "no such console file").into_response(),
    }
}

/// `GET /`: the console page.
pub(super) async fn index() -> Response {
    file("index.html")
}

/// `GET /console/{file}`.
pub(super) async fn asset(Path(name): Path<String>) -> Response {
    file(&name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_loads_no_inline_script_and_nothing_from_elsewhere() {
        let html = std::str::from_utf8(FILES[0].2).expect("UTF-8");
        for (i, _) in html.match_indices("<script") {
            let tag = &html[i..i + html[i..].find('>').expect("closed")];
            assert!(tag.contains("src=\"/console/"), "inline or foreign script: {tag}");
        }
        assert!(!html.contains("style="), "inline style");
        assert!(
            !html.contains("http://") && !html.contains("https://"),
            "a link elsewhere"
        );
    }
}
