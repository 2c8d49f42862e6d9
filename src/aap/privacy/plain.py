"""The purposes in plain language, for the people being measured: a title and a short
description per purpose in English, French and German. The privacy portal
(``GET /v1/portal/{source}``) and the SDK's consent banner show them; the registry's own
``description`` is for the record of processing. A purpose of ``purposes.json`` with no
text here is shown with its id and its registry description (in every language).
"""

from __future__ import annotations

from aap.privacy.purposes import Purpose

LANGUAGES = ("en", "fr", "de")

TEXTS: dict[str, dict[str, tuple[str, str]]] = {
    "analytics": {
        "en": ("Product analytics",
               "We count which pages and features are used, so that we can improve the"
               " site. Your activity is linked to a pseudonymous id, not your name."),
        "fr": ("Mesure d'audience du produit",
               "Nous comptons les pages et fonctions utilisées pour améliorer le site."
               " Votre activité est liée à un identifiant pseudonyme, pas à votre nom."),
        "de": ("Produktanalyse",
               "Wir zählen, welche Seiten und Funktionen genutzt werden, um die Website zu"
               " verbessern. Ihre Aktivität ist mit einer pseudonymen Kennung verknüpft,"
               " nicht mit Ihrem Namen."),
    },
    "marketing": {
        "en": ("Marketing measurement",
               "We measure which campaigns and ads brought you to us."),
        "fr": ("Mesure marketing",
               "Nous mesurons quelles campagnes et publicités vous ont amené chez nous."),
        "de": ("Marketing-Messung",
               "Wir messen, welche Kampagnen und Anzeigen Sie zu uns geführt haben."),
    },
    "personalization": {
        "en": ("Personalisation",
               "We adapt the product to you from how you use it (profiling)."),
        "fr": ("Personnalisation",
               "Nous adaptons le produit à votre usage (profilage)."),
        "de": ("Personalisierung",
               "Wir passen das Produkt anhand Ihrer Nutzung an Sie an (Profiling)."),
    },
    "partner_sharing": {
        "en": ("Sharing with partners",
               "We share data about your visits with the partners named in our privacy"
               " policy."),
        "fr": ("Partage avec des partenaires",
               "Nous partageons des données sur vos visites avec les partenaires nommés"
               " dans notre politique de confidentialité."),
        "de": ("Weitergabe an Partner",
               "Wir geben Daten über Ihre Besuche an die in unserer Datenschutzerklärung"
               " genannten Partner weiter."),
    },
    "audience_measurement": {
        "en": ("Anonymous audience statistics",
               "We count visits anonymously, with no identifier and no cookie, for our own"
               " statistics only."),
        "fr": ("Statistiques de fréquentation anonymes",
               "Nous comptons les visites de façon anonyme, sans identifiant ni cookie,"
               " pour nos seules statistiques."),
        "de": ("Anonyme Besucherstatistik",
               "Wir zählen Besuche anonym, ohne Kennung und ohne Cookie, nur für unsere"
               " eigene Statistik."),
    },
    "device_diagnostics": {
        "en": ("Device diagnostics",
               "Your devices send readings (such as temperature or battery level) so that"
               " we can see how they work and fail. A location is kept only to about"
               " 10 km."),
        "fr": ("Diagnostic des appareils",
               "Vos appareils envoient des mesures (température, batterie…) pour que nous"
               " voyions comment ils fonctionnent et tombent en panne. Une position n'est"
               " gardée qu'à 10 km près environ."),
        "de": ("Gerätediagnose",
               "Ihre Geräte senden Messwerte (etwa Temperatur oder Akkustand), damit wir"
               " sehen, wie sie funktionieren und ausfallen. Ein Standort wird nur auf"
               " etwa 10 km genau gespeichert."),
    },
}


def texts(purpose: Purpose) -> dict[str, dict[str, str]]:
    """``{lang: {"title", "description"}}`` for each of :data:`LANGUAGES`."""
    own = TEXTS.get(purpose.id, {})
    return {lang: dict(zip(("title", "description"),
                           own.get(lang, own.get("en", (purpose.id, purpose.description))),
                           strict=True))
            for lang in LANGUAGES}
