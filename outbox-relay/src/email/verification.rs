//! The verification email: a greeting, the link, the 6-digit code and when they expire.

use identity_proto::outbox::EmailVerificationV1;
use time::OffsetDateTime;

use super::expiry::Expiry;
use super::templates::Kind;
use super::{Locale, RenderError, RenderedEmail, Renderer};

impl Renderer {
    /// Renders the verification email of `message` in the best locale for `message.locale`,
    /// describing its expiry as seen at `now`.
    ///
    /// Fails with [`RenderError::Expired`] when `message.expires_at` is not after `now`.
    pub fn verification(
        &self,
        message: &EmailVerificationV1,
        now: OffsetDateTime,
    ) -> Result<RenderedEmail, RenderError> {
        let locale = Locale::negotiate(&message.locale);
        let expiry =
            Expiry::describe(message.expires_at, now, locale).ok_or(RenderError::Expired)?;
        let link = self.links.verify.with_token(&message.token);
        let context = minijinja::context! {
            display_name => message.display_name.trim(),
            link => &link,
            code => &message.code,
            expires_in => expiry.remaining,
            expires_on => expiry.moment,
        };
        let parts = self
            .templates
            .render(Kind::VerificationV1, locale, &context)?;
        Ok(RenderedEmail::new(locale, parts, Some(link)))
    }
}

#[cfg(test)]
mod tests {
    use time::Duration;
    use time::macros::datetime;

    use super::*;

    const NOW: OffsetDateTime = datetime!(2026-11-21 10:00 UTC);
    const TOKEN: &str = "Zm9vYmFyYmF6cXV4cXV1eGNvcmdlZ3JhdWx0Z2FycGx5";

    fn message(locale: &str, display_name: &str, expires_in: Duration) -> EmailVerificationV1 {
        EmailVerificationV1 {
            recipient: "ada@example.com".into(),
            display_name: display_name.into(),
            locale: locale.into(),
            token: TOKEN.into(),
            code: "042917".into(),
            expires_at: NOW + expires_in,
        }
    }

    fn render(locale: &str, display_name: &str, expires_in: Duration) -> RenderedEmail {
        Renderer::for_tests()
            .verification(&message(locale, display_name, expires_in), NOW)
            .expect("renders")
    }

    #[test]
    fn the_english_email_has_greeting_link_code_and_expiry() {
        let email = render("en", "Ada Lovelace", Duration::hours(24));
        assert_eq!(email.locale(), Locale::En);
        assert_eq!(email.subject(), "Verify your email address");
        let link = format!("https://app.example.com/verify?token={TOKEN}");
        assert_eq!(email.link(), Some(link.as_str()));
        let expiry =
            "This link and code expire in 24 hours, on Sunday 22 November 2026 at 10:00 UTC.";
        for body in [email.text(), email.html()] {
            assert!(body.contains("Hello Ada Lovelace,"));
            assert!(body.contains("042917"));
            assert!(body.contains(expiry), "{body}");
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
        let email = render("fr", "Ada", Duration::days(3));
        assert_eq!(email.locale(), Locale::Fr);
        assert_eq!(email.subject(), "Vérifiez votre adresse e-mail");
        let expiry = "Ce lien et ce code expirent dans 3 jours, le mardi 24 novembre 2026 à 10\u{a0}h\u{a0}00 UTC.";
        for body in [email.text(), email.html()] {
            assert!(body.contains("Bonjour Ada,"));
            assert!(body.contains("042917"));
            assert!(body.contains(expiry), "{body}");
        }
        assert!(email.html().contains("<html lang=\"fr\">"));
        assert!(email.text().contains(email.link().expect("a link")));
    }

    #[test]
    fn locales_fall_back_to_the_language_then_english() {
        for (requested, expected) in [
            ("pt-BR", Locale::En),
            ("fr-CA", Locale::Fr),
            ("EN-gb", Locale::En),
            ("", Locale::En),
        ] {
            let email = render(requested, "Ada", Duration::hours(24));
            assert_eq!(email.locale(), expected, "{requested}");
        }
        assert!(
            render("fr-CA", "Ada", Duration::hours(24))
                .text()
                .starts_with("Bonjour")
        );
    }

    #[test]
    fn the_expiry_reads_in_minutes_hours_or_days() {
        let sentence = |expires_in| render("en", "Ada", expires_in).text().to_owned();
        assert!(
            sentence(Duration::minutes(45))
                .contains("expire in 45 minutes, on Saturday 21 November 2026 at 10:45 UTC.")
        );
        assert!(sentence(Duration::hours(24)).contains("expire in 24 hours,"));
        assert!(sentence(Duration::days(3)).contains("expire in 3 days,"));
    }

    #[test]
    fn an_expired_message_is_not_rendered() {
        let message = message("en", "Ada", Duration::minutes(-1));
        let result = Renderer::for_tests().verification(&message, NOW);
        assert!(matches!(result, Err(RenderError::Expired)));
    }

    #[test]
    fn the_display_name_is_escaped_in_html_only() {
        let email = render("en", "<script>alert(1)</script>", Duration::hours(24));
        assert!(!email.html().contains("<script>"));
        assert!(
            email
                .html()
                .contains("Hello &lt;script&gt;alert(1)&lt;&#x2f;script&gt;,")
        );
        assert!(email.text().contains("Hello <script>alert(1)</script>,"));
    }

    #[test]
    fn debug_output_hides_the_link_token_code_and_bodies() {
        let email = render("en", "Ada", Duration::hours(24));
        let debug = format!("{email:?}");
        assert!(debug.contains("Verify your email address"));
        for secret in [TOKEN, "042917", "verify?token", "Hello"] {
            assert!(!debug.contains(secret), "{secret} leaked in {debug}");
        }
    }
}
