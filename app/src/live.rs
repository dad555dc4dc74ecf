//! Live updates: one `EventSource` on the server's `/api/events` for the whole app. Views read
//! [`LiveUpdates::changes`] inside their resources, so any event refetches what they show.

use leptos::prelude::*;
use wasm_bindgen::closure::Closure;
use wasm_bindgen::JsCast;

use format::api::{EventKind, EVENTS_PATH, READY_EVENT, RESYNC_EVENT};

/// Event names `diffit-server` sends (and the default `message`); any of them means
/// "something under the checkpoints dir changed".
fn event_names() -> Vec<&'static str> {
    let mut names = vec!["message", READY_EVENT, RESYNC_EVENT];
    names.extend(EventKind::ALL.map(EventKind::as_str));
    names
}

/// State of the connection to the event stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Connection {
    /// Opening, or reconnecting after a drop (the browser retries by itself).
    Connecting,
    /// Receiving events.
    Open,
    /// The browser gave up, or `EventSource` is unavailable.
    Closed,
}

/// Shared live-update signals, provided once by the app root.
#[derive(Debug, Clone, Copy)]
pub struct LiveUpdates {
    /// Counts received events (and reconnects, which may have missed some).
    pub changes: ReadSignal<u64>,
    /// Connection state, for the header's indicator.
    pub connection: ReadSignal<Connection>,
}

impl LiveUpdates {
    /// Opens the event stream; call once, from the app root.
    pub fn connect() -> LiveUpdates {
        let (changes, set_changes) = signal(0u64);
        let (connection, set_connection) = signal(Connection::Connecting);
        match web_sys::EventSource::new(EVENTS_PATH) {
            Ok(source) => {
                let bump = move || set_changes.update(|n| *n += 1);
                listen(&source, &event_names(), bump);
                let on_open = move || {
                    // After a reconnect we may have missed events: refetch once.
                    if connection.get_untracked() != Connection::Open {
                        set_connection.set(Connection::Open);
                        bump();
                    }
                };
                listen(&source, &["open"], on_open);
                let watched = source.clone();
                listen(&source, &["error"], move || {
                    let state = if watched.ready_state() == web_sys::EventSource::CLOSED {
                        Connection::Closed
                    } else {
                        Connection::Connecting
                    };
                    set_connection.set(state);
                });
            }
            Err(_) => set_connection.set(Connection::Closed),
        }
        LiveUpdates {
            changes,
            connection,
        }
    }
}

fn listen(source: &web_sys::EventSource, names: &[&str], handler: impl Fn() + 'static) {
    let callback = Closure::<dyn Fn()>::new(handler);
    for name in names {
        let _ = source.add_event_listener_with_callback(name, callback.as_ref().unchecked_ref());
    }
    // The stream lives as long as the page.
    callback.forget();
}

/// The app's live updates (provided by the root component).
pub fn use_live() -> LiveUpdates {
    use_context::<LiveUpdates>().unwrap_or_else(|| {
        let (changes, _) = signal(0);
        let (connection, _) = signal(Connection::Closed);
        LiveUpdates {
            changes,
            connection,
        }
    })
}
