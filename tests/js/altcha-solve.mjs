// Solves ALTCHA v1 challenges with altcha-lib (the maintained library, pinned in package.json),
// the way the widget does, for the Rust tests (tests/src/altcha.rs).
//
// stdin: a JSON array of challenges {algorithm, challenge, maxnumber, salt, signature}, as
// identity.v1.ChallengeService/CreateChallenge returns them.
// stdout: one JSON object per challenge: {payload, verified, took_ms}, where payload is what the
// widget submits (base64 of {algorithm, challenge, number, salt, signature, took}) and verified
// is altcha-lib's verifySolution(payload, key) when ALTCHA_HMAC_KEY is set (else null).
import { solveChallenge, verifySolution } from 'altcha-lib/v1';

const chunks = [];
for await (const chunk of process.stdin) chunks.push(chunk);
const challenges = JSON.parse(Buffer.concat(chunks).toString('utf8'));
const key = process.env.ALTCHA_HMAC_KEY || '';

for (const c of challenges) {
  const started = performance.now();
  const solution = await solveChallenge(c.challenge, c.salt, c.algorithm, c.maxnumber).promise;
  const tookMs = performance.now() - started;
  if (!solution) {
    console.error(`no solution in 0..=${c.maxnumber} for ${c.challenge}`);
    process.exit(1);
  }
  const payload = btoa(
    JSON.stringify({
      algorithm: c.algorithm,
      challenge: c.challenge,
      number: solution.number,
      salt: c.salt,
      signature: c.signature,
      took: solution.took,
    }),
  );
  const verified = key ? await verifySolution(payload, key) : null;
  console.log(JSON.stringify({ payload, verified, took_ms: tookMs }));
}
