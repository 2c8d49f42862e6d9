// Reads JSON cases from stdin ([{consents, legitimate, cmpId, cmpVersion, policy}]) and
// prints, per case, a JSON line: the TC string the IAB's library (@iabtechlabtcf/core)
// makes of it, and what the same library decodes from that string.
import { readFileSync } from 'node:fs';
import { GVL, TCModel, TCString } from '@iabtechlabtcf/core';

const purposes = {};
for (let i = 1; i <= 11; i++) purposes[i] = { id: i, name: `purpose ${i}`, description: '', illustrations: [] };
const cases = JSON.parse(readFileSync(0, 'utf8'));
for (const c of cases) {
  const gvl = new GVL({ gvlSpecificationVersion: 3, vendorListVersion: 150, tcfPolicyVersion: c.policy,
    lastUpdated: '2026-11-01T00:00:00Z', purposes, specialPurposes: {}, features: {},
    specialFeatures: {}, vendors: {}, stacks: {}, dataCategories: {} });
  const m = new TCModel(gvl);
  m.cmpId = c.cmpId; m.cmpVersion = c.cmpVersion; m.consentScreen = 1; m.consentLanguage = 'EN';
  m.isServiceSpecific = true;
  m.purposeConsents.set(c.consents);
  m.purposeLegitimateInterests.set(c.legitimate);
  const tc = TCString.encode(m);
  const d = TCString.decode(tc);
  console.log(JSON.stringify({ tc, version: d.version, consents: [...d.purposeConsents.values()],
    legitimate: [...d.purposeLegitimateInterests.values()], cmpId: d.cmpId,
    cmpVersion: d.cmpVersion, policy: d.policyVersion, serviceSpecific: d.isServiceSpecific }));
}
