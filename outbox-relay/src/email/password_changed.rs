//! The password-changed notice: when the password was changed, that every session was signed
//! out, and what to do if it was not the reader. It holds no link and no secret.

use identity_proto::outbox::EmailPasswordChangedV1;

use super::expiry::moment;
use super::templates::Kind;
use super::{Locale, RenderError, RenderedEmail, Renderer};

impl Renderer {
    /// Renders the password-changed notice of `message` in the best locale for
    /// `message.locale`. It is sent however late it is: the change still happened.
    pub fn password_changed(
        &self,
        message: &EmailPasswordChangedV1,
    ) -> Result<RenderedEmail, RenderError> {
        let locale = Locale::negotiate(&message.locale);
        let context = minijinja::context! {
            display_name => message.display_name.trim(),
            changed_on => moment(message.changed_at, locale),
        };
        let parts = self
            .templates
            .render(Kind::PasswordChangedV1, locale, &context)?;
        Ok(RenderedEmail::new(locale, parts, None))
    }
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;

    use super::*;

    fn render(locale: &str, display_name: &str) -> RenderedEmail {
        let message = EmailPasswordChangedV1 {
            recipient: "ada@example.com".into(),
            display_name: display_name.into(),
            locale: locale.into(),
            // 09:05 in Paris is 08:05 UTC.
            changed_at: datetime!(2026-11-21 09:05 +01:00),
        };
        Renderer::for_tests()
            .password_changed(&message)
            .expect("renders")
    }

    #[test]
    fn the_english_notice_says_when_what_happened_and_what_to_do() {
        let email = render("en", "Ada Lovelace");
        assert_eq!(email.locale(), Locale::En);
        assert_eq!(email.subject(), "Your password was changed");
        for body in [email.text(), email.html()] {
            assert!(body.contains("Hello Ada Lovelace,"), "{body}");
            assert!(
                body.contains(
                    "The password of your account was changed on Saturday 21 November 2026 at 08:05 UTC."
                ),
                "{body}"
            );
            assert!(body.contains("All your sessions were signed out"), "{body}");
            assert!(body.contains("If it was not you"), "{body}");
            assert!(body.contains("Reset your password now"), "{body}");
            assert!(body.contains("contact support"), "{body}");
        }
    }

    #[test]
    fn the_french_notice_is_in_french() {
        let email = render("fr", "Ada");
        assert_eq!(email.locale(), Locale::Fr);
        assert_eq!(email.subject(), "Votre mot de passe a été modifié");
        for body in [email.text(), email.html()] {
            assert!(body.contains("Bonjour Ada,"), "{body}");
            assert!(
                body.contains("a été modifié le samedi 21 novembre 2026 à 8\u{a0}h\u{a0}05 UTC."),
                "{body}"
            );
            assert!(
                body.contains("Toutes vos sessions ont été fermées"),
                "{body}"
            );
            assert!(body.contains("contactez le support"), "{body}");
        }
        assert!(email.html().contains("<html lang=\"fr\">"));
    }

    #[test]
    fn locales_fall_back_to_the_language_then_english() {
        for (requested, expected, greeting) in [
            ("fr-BE", Locale::Fr, "Bonjour"),
            ("de", Locale::En, "Hello"),
            ("", Locale::En, "Hello"),
        ] {
            let email = render(requested, "Ada");
            assert_eq!(email.locale(), expected, "{requested}");
            assert!(email.text().starts_with(greeting), "{requested}");
        }
    }

    #[test]
    fn the_notice_has_no_link() {
        let email = render("en", "Ada");
        assert_eq!(email.link(), None);
        for body in [email.text(), email.html()] {
            assert!(!body.contains("http"), "{body}");
            assert!(!body.contains("token"), "{body}");
            assert!(!body.contains("<a "), "{body}");
        }
    }

    #[test]
    fn the_display_name_is_escaped_in_html_only() {
        let email = render("en", "<img src=x onerror=alert(1)>");
        assert!(!email.html().contains("<img"));
        assert!(
            email
                .html()
                .contains("Hello &lt;img src=x onerror=alert(1)&gt;,")
        );
        assert!(email.text().contains("Hello <img src=x onerror=alert(1)>,"));
    }
}
