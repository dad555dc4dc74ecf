//! The dashboard, a Leptos client-side app.
