//! The password-reset email: a greeting, the reset link, when it expires, and that nothing
//! changes if the reader did not ask.

use identity_proto::outbox::EmailPasswordResetV1;
use time::OffsetDateTime;

use super::expiry::Expiry;
use super::templates::Kind;
use super::{Locale, RenderError, RenderedEmail, Renderer};

impl Renderer {
    /// Renders the password-reset email of `message` in the best locale for `message.locale`,
    /// describing its expiry as seen at `now`.
    ///
    /// Fails with [`RenderError::Expired`] when `message.expires_at` is not after `now`.
    pub fn password_reset(
        &self,
        message: &EmailPasswordResetV1,
        now: OffsetDateTime,
    ) -> Result<RenderedEmail, RenderError> {
        let locale = Locale::negotiate(&message.locale);
        let expiry =
            Expiry::describe(message.expires_at, now, locale).ok_or(RenderError::Expired)?;
        let link = self.links.reset.with_token(&message.token);
        let context = minijinja::context! {
            display_name => message.display_name.trim(),
            link => &link,
            expires_in => expiry.remaining,
            expires_on => expiry.moment,
        };
        let parts = self
            .templates
            .render(Kind::PasswordResetV1, locale, &context)?;
        Ok(RenderedEmail::new(locale, parts, Some(link)))
    }
}

#[cfg(test)]
mod tests {
    use time::Duration;
    use time::macros::datetime;

    use super::*;

    const NOW: OffsetDateTime = datetime!(2026-11-21 10:00 UTC);
    const TOKEN: &str = "cmVzZXRyZXNldHJlc2V0cmVzZXRyZXNldHJlc2V0cmVz";

    fn message(locale: &str, display_name: &str, expires_in: Duration) -> EmailPasswordResetV1 {
        EmailPasswordResetV1 {
            recipient: "ada@example.com".into(),
            display_name: display_name.into(),
            locale: locale.into(),
            token: TOKEN.into(),
            expires_at: NOW + expires_in,
        }
    }

    fn render(locale: &str, display_name: &str, expires_in: Duration) -> RenderedEmail {
        Renderer::for_tests()
            .password_reset(&message(locale, display_name, expires_in), NOW)
            .expect("renders")
    }

    #[test]
    fn the_english_email_has_greeting_reset_link_expiry_and_reassurance() {
        let email = render("en", "Ada Lovelace", Duration::hours(1));
        assert_eq!(email.locale(), Locale::En);
        assert_eq!(email.subject(), "Reset your password");
        let link = format!("https://app.example.com/reset?token={TOKEN}");
        assert_eq!(email.link(), Some(link.as_str()));
        let expiry = "This link expires in 1 hour, on Saturday 21 November 2026 at 11:00 UTC.";
        let ignore = "If you did not ask to reset your password, ignore this email: your password is unchanged.";
        for body in [email.text(), email.html()] {
            assert!(body.contains("Hello Ada Lovelace,"), "{body}");
            assert!(body.contains(expiry), "{body}");
            assert!(body.contains(ignore), "{body}");
            assert!(!body.contains("verify"), "{body}");
        }
        assert!(email.text().contains(&link));
        // In HTML, `/` is escaped as `&#x2f;`, which browsers read back as `/`.
        let escaped_link = link.replace('/', "&#x2f;");
        assert!(
            email
                .html()
                .contains(&format!("<a href=\"{escaped_link}\""))
        );
    }

    #[test]
    fn the_french_email_is_in_french() {
        let email = render("fr", "Ada", Duration::minutes(30));
        assert_eq!(email.locale(), Locale::Fr);
        assert_eq!(email.subject(), "Réinitialisez votre mot de passe");
        let expiry =
            "Ce lien expire dans 30 minutes, le samedi 21 novembre 2026 à 10\u{a0}h\u{a0}30 UTC.";
        for body in [email.text(), email.html()] {
            assert!(body.contains("Bonjour Ada,"), "{body}");
            assert!(body.contains(expiry), "{body}");
            assert!(body.contains("votre mot de passe reste inchangé"), "{body}");
        }
        assert!(email.html().contains("<html lang=\"fr\">"));
        assert!(email.text().contains(email.link().expect("a link")));
    }

    #[test]
    fn locales_fall_back_to_the_language_then_english() {
        for (requested, expected, greeting) in [
            ("pt-BR", Locale::En, "Hello"),
            ("fr-CA", Locale::Fr, "Bonjour"),
            ("", Locale::En, "Hello"),
        ] {
            let email = render(requested, "Ada", Duration::hours(1));
            assert_eq!(email.locale(), expected, "{requested}");
            assert!(email.text().starts_with(greeting), "{requested}");
        }
    }

    #[test]
    fn an_expired_link_is_not_rendered() {
        for expires_in in [Duration::ZERO, Duration::minutes(-1)] {
            let message = message("en", "Ada", expires_in);
            let result = Renderer::for_tests().password_reset(&message, NOW);
            assert!(matches!(result, Err(RenderError::Expired)), "{expires_in}");
        }
    }

    #[test]
    fn the_token_is_percent_encoded_in_the_link() {
        let mut message = message("en", "Ada", Duration::hours(1));
        message.token = "a&b\"<c>".into();
        let email = Renderer::for_tests()
            .password_reset(&message, NOW)
            .expect("renders");
        assert_eq!(
            email.link(),
            Some("https://app.example.com/reset?token=a%26b%22%3Cc%3E")
        );
    }

    #[test]
    fn the_display_name_is_escaped_in_html_only() {
        let email = render("en", "<script>alert(1)</script>", Duration::hours(1));
        assert!(!email.html().contains("<script>"));
        assert!(
            email
                .html()
                .contains("Hello &lt;script&gt;alert(1)&lt;&#x2f;script&gt;,")
        );
        assert!(email.text().contains("Hello <script>alert(1)</script>,"));
    }

    #[test]
    fn debug_output_hides_the_link_token_and_bodies() {
        let email = render("en", "Ada", Duration::hours(1));
        let debug = format!("{email:?}");
        assert!(debug.contains("Reset your password"));
        for secret in [TOKEN, "reset?token", "Hello"] {
            assert!(!debug.contains(secret), "{secret} leaked in {debug}");
        }
    }
}
