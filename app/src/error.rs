//! How failures appear in the page: a visible box with the message, never a blank view.

use leptos::prelude::*;

/// A failure message, with `data-error` for tests and `role="alert"` for screen readers.
#[component]
pub fn ErrorBox(
    /// What went wrong, in words.
    #[prop(into)]
    message: String,
) -> impl IntoView {
    view! {
        <div class="error-box" role="alert" data-error="">
            <strong>"Something went wrong. "</strong>
            <span>{message}</span>
        </div>
    }
}
