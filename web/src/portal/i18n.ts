// The portal's own words in English, French and German (the purposes' texts come from
// GET /v1/portal/{source}, in the same three languages).

export type Lang = "en" | "fr" | "de";

export function pickLang(tag: string | undefined): Lang {
  const l = (tag || "en").slice(0, 2).toLowerCase();
  return l === "fr" || l === "de" ? l : "en";
}

const en = {
  title: "Your data",
  intro: (s: string) => `What ${s} does with data about your visits, and your choices.`,
  purposes: "Why data is processed",
  consentAsked: "Only with your consent",
  basis: {
    consent: "Consent",
    legitimate_interest: "Legitimate interest (no consent asked; you may object)",
    contract: "Needed for the service you use (contract)",
    legal_obligation: "Required by law",
  } as Record<string, string>,
  allowed: "Allowed",
  notAllowed: "Not allowed",
  saved: (t: string, on: boolean) => `${t}: ${on ? "allowed" : "not allowed"}. Saved.`,
  noToken: (s: string) => `To see and change your choices, or to get or erase your data, open this page from the "Your data" link on ${s}'s site while you are signed in there. That link identifies you for a few minutes; nothing else is needed.`,
  expired: "Your link has expired. Open this page again from the site's \"Your data\" link.",
  rights: "Your rights",
  access: "Get a copy of my data",
  accessHelp: "We prepare a file (zip) with the data held about you; it takes a moment.",
  erase: "Erase my data",
  eraseHelp: "Erases the data held about you. This cannot be undone.",
  confirmErase: "Erase all data about you? This cannot be undone.",
  yesErase: "Yes, erase my data",
  cancel: "Cancel",
  requests: "Your requests",
  noRequests: "You have made no request yet.",
  type: { access: "Copy of data", erasure: "Erasure", restriction: "Restriction", objection: "Objection" } as Record<string, string>,
  status: { pending: "Waiting", running: "In progress", done: "Done", failed: "Failed" } as Record<string, string>,
  cols: { type: "Request", filed: "Filed", status: "Status", file: "File" },
  download: "Download (zip)",
  filed: (t: string) => `Request filed: ${t}.`,
  unknownSource: "There is no privacy portal under this address.",
  loading: "Loading…",
};

type Words = typeof en;

const fr: Words = {
  title: "Vos données",
  intro: (s) => `Ce que ${s} fait des données sur vos visites, et vos choix.`,
  purposes: "Pourquoi des données sont traitées",
  consentAsked: "Seulement avec votre consentement",
  basis: {
    consent: "Consentement",
    legitimate_interest: "Intérêt légitime (sans consentement ; vous pouvez vous y opposer)",
    contract: "Nécessaire au service que vous utilisez (contrat)",
    legal_obligation: "Obligation légale",
  },
  allowed: "Autorisé",
  notAllowed: "Refusé",
  saved: (t, on) => `${t} : ${on ? "autorisé" : "refusé"}. Enregistré.`,
  noToken: (s) => `Pour voir et changer vos choix, ou obtenir ou effacer vos données, ouvrez cette page depuis le lien « Vos données » du site de ${s}, en étant connecté. Ce lien vous identifie pendant quelques minutes ; rien d'autre n'est nécessaire.`,
  expired: "Votre lien a expiré. Rouvrez cette page depuis le lien « Vos données » du site.",
  rights: "Vos droits",
  access: "Obtenir une copie de mes données",
  accessHelp: "Nous préparons un fichier (zip) avec les données vous concernant ; cela prend un moment.",
  erase: "Effacer mes données",
  eraseHelp: "Efface les données vous concernant. C'est irréversible.",
  confirmErase: "Effacer toutes les données vous concernant ? C'est irréversible.",
  yesErase: "Oui, effacer mes données",
  cancel: "Annuler",
  requests: "Vos demandes",
  noRequests: "Vous n'avez fait aucune demande.",
  type: { access: "Copie des données", erasure: "Effacement", restriction: "Limitation", objection: "Opposition" },
  status: { pending: "En attente", running: "En cours", done: "Terminée", failed: "Échouée" },
  cols: { type: "Demande", filed: "Déposée", status: "État", file: "Fichier" },
  download: "Télécharger (zip)",
  filed: (t) => `Demande déposée : ${t}.`,
  unknownSource: "Il n'y a pas de portail de confidentialité à cette adresse.",
  loading: "Chargement…",
};

const de: Words = {
  title: "Ihre Daten",
  intro: (s) => `Was ${s} mit Daten über Ihre Besuche tut, und Ihre Entscheidungen.`,
  purposes: "Wozu Daten verarbeitet werden",
  consentAsked: "Nur mit Ihrer Einwilligung",
  basis: {
    consent: "Einwilligung",
    legitimate_interest: "Berechtigtes Interesse (keine Einwilligung; Sie können widersprechen)",
    contract: "Für den genutzten Dienst nötig (Vertrag)",
    legal_obligation: "Gesetzlich vorgeschrieben",
  },
  allowed: "Erlaubt",
  notAllowed: "Nicht erlaubt",
  saved: (t, on) => `${t}: ${on ? "erlaubt" : "nicht erlaubt"}. Gespeichert.`,
  noToken: (s) => `Um Ihre Entscheidungen zu sehen und zu ändern oder Ihre Daten zu erhalten oder zu löschen, öffnen Sie diese Seite über den Link „Ihre Daten“ auf der Website von ${s}, während Sie dort angemeldet sind. Der Link weist Sie für einige Minuten aus; mehr ist nicht nötig.`,
  expired: "Ihr Link ist abgelaufen. Öffnen Sie diese Seite erneut über den Link „Ihre Daten“ der Website.",
  rights: "Ihre Rechte",
  access: "Kopie meiner Daten anfordern",
  accessHelp: "Wir erstellen eine Datei (zip) mit den Daten über Sie; das dauert einen Moment.",
  erase: "Meine Daten löschen",
  eraseHelp: "Löscht die Daten über Sie. Das kann nicht rückgängig gemacht werden.",
  confirmErase: "Alle Daten über Sie löschen? Das kann nicht rückgängig gemacht werden.",
  yesErase: "Ja, meine Daten löschen",
  cancel: "Abbrechen",
  requests: "Ihre Anfragen",
  noRequests: "Sie haben noch keine Anfrage gestellt.",
  type: { access: "Datenkopie", erasure: "Löschung", restriction: "Einschränkung", objection: "Widerspruch" },
  status: { pending: "Wartend", running: "In Bearbeitung", done: "Erledigt", failed: "Fehlgeschlagen" },
  cols: { type: "Anfrage", filed: "Gestellt", status: "Status", file: "Datei" },
  download: "Herunterladen (zip)",
  filed: (t) => `Anfrage gestellt: ${t}.`,
  unknownSource: "Unter dieser Adresse gibt es kein Datenschutzportal.",
  loading: "Wird geladen…",
};

export const WORDS: Record<Lang, Words> = { en, fr, de };
