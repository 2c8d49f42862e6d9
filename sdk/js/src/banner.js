// AAP's consent banner: `aap.consent.show(options)` loads this file (/sdk-banner.js) the
// first time it is called, so that aap.min.js stays small.
//
// A modal dialog (role=dialog, aria-modal, labelled and described) with one checkbox per
// purpose that asks for consent (none ticked in advance), and three buttons of equal
// weight, side by side and styled alike: "Accept all", "Reject all", "Save choices"
// (the CNIL's rule: refusing is as easy as accepting). Focus moves into the dialog and
// stays there (Tab and Shift-Tab wrap); Escape closes it without recording anything and
// focus returns where it was. Texts in English, French and German (`lang` option, else
// navigator.language); the purposes' own texts come from GET /v1/portal/{source}.
//
// Strict-CSP friendly: no inline script, no inline style attribute, no <style> element.
// The banner lives in a shadow root styled with a constructable stylesheet
// (adoptedStyleSheets, not subject to style-src); the site's CSP needs only the AAP host
// in `script-src` (this file) and `connect-src` (the purposes and the statement). Where
// constructable stylesheets are missing, a <style> element carrying `options.nonce` is
// used instead. Every text is set with textContent: purpose texts are data, not markup.

const UI = {
  en: {
    title: "Your privacy choices",
    intro: "We would like your consent to process data about your visit for the purposes below. You can change your mind at any time.",
    accept: "Accept all",
    reject: "Reject all",
    save: "Save choices",
    purposes: "Purposes",
    error: "The purposes could not be loaded.",
  },
  fr: {
    title: "Vos choix de confidentialité",
    intro: "Nous souhaitons votre consentement pour traiter des données sur votre visite pour les finalités ci-dessous. Vous pouvez changer d'avis à tout moment.",
    accept: "Tout accepter",
    reject: "Tout refuser",
    save: "Enregistrer mes choix",
    purposes: "Finalités",
    error: "Les finalités n'ont pas pu être chargées.",
  },
  de: {
    title: "Ihre Datenschutzeinstellungen",
    intro: "Wir bitten um Ihre Einwilligung, Daten über Ihren Besuch für die folgenden Zwecke zu verarbeiten. Sie können Ihre Entscheidung jederzeit ändern.",
    accept: "Alle akzeptieren",
    reject: "Alle ablehnen",
    save: "Auswahl speichern",
    purposes: "Zwecke",
    error: "Die Zwecke konnten nicht geladen werden.",
  },
};

const CSS = `
:host{all:initial}
.aap-backdrop{position:fixed;inset:0;background:rgba(0,0,0,.45);z-index:2147483646;display:flex;align-items:flex-end;justify-content:center}
.aap-dialog{box-sizing:border-box;background:#fff;color:#1a1a1a;font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;max-width:40rem;width:100%;max-height:90vh;overflow:auto;margin:0;padding:1.25rem;border-radius:.5rem .5rem 0 0;box-shadow:0 -2px 16px rgba(0,0,0,.3)}
.aap-dialog:focus{outline:3px solid #1f5fbf;outline-offset:-3px}
h2{font-size:1.2rem;margin:0 0 .5rem}
p{margin:0 0 .75rem}
fieldset{border:0;margin:0 0 1rem;padding:0}
legend{font-weight:600;margin-bottom:.25rem;padding:0}
.aap-purpose{display:flex;gap:.6rem;align-items:flex-start;padding:.5rem 0;border-top:1px solid #ddd}
.aap-purpose input{width:1.2rem;height:1.2rem;margin:.15rem 0 0;flex:none}
.aap-purpose label{font-weight:600}
.aap-purpose span{display:block;font-weight:400;color:#333}
.aap-buttons{display:flex;flex-wrap:wrap;gap:.5rem}
button{flex:1 1 9rem;min-height:2.75rem;font:inherit;font-weight:600;color:#fff;background:#1f4f99;border:2px solid #1f4f99;border-radius:.35rem;padding:.5rem 1rem;cursor:pointer}
button:hover{background:#173c75}
button:focus-visible,input:focus-visible{outline:3px solid #f5a623;outline-offset:2px}
.aap-error{color:#a00000}
`;

const pick = (lang) => {
  const l = String(lang || navigator.language || "en").slice(0, 2).toLowerCase();
  return UI[l] ? l : "en";
};

const el = (tag, attrs = {}, text) => {
  const e = document.createElement(tag);
  for (const k in attrs) e.setAttribute(k, attrs[k]);
  if (text != null) e.textContent = text;
  return e;
};

async function purposesOf(host, o) {
  if (o.purposes) return o.purposes;
  const r = await fetch(host + "/v1/portal/" + encodeURIComponent(o.source), { credentials: "omit" });
  if (!r.ok) throw new Error("portal " + r.status);
  return (await r.json()).purposes;
}

let open = null;

// Shows the banner; resolves with the choice recorded (an object purpose → boolean), or
// null when the person closed it with Escape (nothing recorded).
export async function show(aap, o = {}) {
  if (open) return open;
  const host = (o.host || "").replace(/\/$/, "");
  const lang = pick(o.lang);
  const t = UI[lang];
  const before = document.activeElement;
  let purposes;
  let failed = false;
  try {
    purposes = (await purposesOf(host, o)).filter((p) => p.consent !== false);
  } catch (e) {
    purposes = [];
    failed = true;
  }
  const current = aap.consent.get();

  const hostEl = el("div", { "data-aap-banner": "" });
  const root = hostEl.attachShadow({ mode: "open" });
  if (root.adoptedStyleSheets && window.CSSStyleSheet && "replaceSync" in CSSStyleSheet.prototype) {
    const sheet = new CSSStyleSheet();
    sheet.replaceSync(CSS);
    root.adoptedStyleSheets = [sheet];
  } else {
    root.appendChild(el("style", o.nonce ? { nonce: o.nonce } : {}, CSS));
  }
  const backdrop = el("div", { class: "aap-backdrop" });
  const dialog = el("div", {
    class: "aap-dialog",
    role: "dialog",
    "aria-modal": "true",
    "aria-labelledby": "aap-title",
    "aria-describedby": "aap-intro",
    tabindex: "-1",
    lang,
  });
  dialog.append(el("h2", { id: "aap-title" }, t.title), el("p", { id: "aap-intro" }, t.intro));
  if (failed) dialog.append(el("p", { class: "aap-error", role: "alert" }, t.error));
  const boxes = {};
  if (purposes.length) {
    const set = el("fieldset");
    set.append(el("legend", {}, t.purposes));
    purposes.forEach((p, i) => {
      const text = (p.texts && (p.texts[lang] || p.texts.en)) || { title: p.title || p.id, description: p.description || "" };
      const row = el("div", { class: "aap-purpose" });
      const box = el("input", { type: "checkbox", id: "aap-p" + i, name: p.id, "aria-describedby": "aap-d" + i });
      box.checked = current[p.id] === true;
      const label = el("label", { for: "aap-p" + i }, text.title);
      const wrap = el("div");
      wrap.append(label, el("span", { id: "aap-d" + i }, text.description));
      row.append(box, wrap);
      set.append(row);
      boxes[p.id] = box;
    });
    dialog.append(set);
  }
  const buttons = el("div", { class: "aap-buttons" });
  const bAccept = el("button", { type: "button", "data-choice": "accept" }, t.accept);
  const bReject = el("button", { type: "button", "data-choice": "reject" }, t.reject);
  const bSave = el("button", { type: "button", "data-choice": "save" }, t.save);
  buttons.append(bAccept, bReject, bSave);
  dialog.append(buttons);
  backdrop.append(dialog);
  root.append(backdrop);
  document.body.append(hostEl);

  let done;
  open = new Promise((resolve) => (done = resolve));
  const close = (choice) => {
    hostEl.remove();
    open = null;
    if (choice) aap.consent.set(choice);
    if (before && before.focus) before.focus();
    if (o.onClose) o.onClose(choice);
    done(choice);
  };
  const all = (v) => {
    const c = {};
    for (const id in boxes) c[id] = v;
    return c;
  };
  bAccept.addEventListener("click", () => close(all(true)));
  bReject.addEventListener("click", () => close(all(false)));
  bSave.addEventListener("click", () => {
    const c = {};
    for (const id in boxes) c[id] = boxes[id].checked;
    close(c);
  });
  dialog.addEventListener("keydown", (e) => {
    if (e.key === "Escape") {
      e.preventDefault();
      close(null);
      return;
    }
    if (e.key !== "Tab") return;
    const f = [...dialog.querySelectorAll("input,button")];
    const at = f.indexOf(root.activeElement);
    const next = e.shiftKey ? (at <= 0 ? f.length - 1 : at - 1) : at === f.length - 1 ? 0 : at + 1;
    e.preventDefault();
    f[next].focus();
  });
  dialog.focus();
  return open;
}

window.aapBanner = show;
