// A real OpenID Provider (npm oidc-provider, certified) for the console's sign-in test, on
// loopback only. Its own login form accepts any password for the accounts below (test only).
// Each start signs with a fresh RSA key under a new key id, so restarting it rotates the keys.
//
// Environment: PORT; CONSOLE_SECRET (the confidential client's secret); CONSOLE_REDIRECT and
// PUBLIC_REDIRECT (the redirect URIs of the confidential and the public client).
import { generateKeyPairSync, randomUUID } from 'node:crypto';

import Provider from 'oidc-provider';

const { PORT, CONSOLE_SECRET, CONSOLE_REDIRECT, PUBLIC_REDIRECT } = process.env;
const issuer = `http://127.0.0.1:${PORT}`;

// The claims the gateway maps: `tenant` (auth.tenant_claim) and `roles` (auth.roles_claim).
const ACCOUNTS = {
  fin: { roles: ['finance'] },
  adm: { roles: ['admin'] },
  ann: { tenant: 'alpha', roles: [] },
  nobody: {},
  // Its ID tokens are issued for another client (see below).
  outsider: { tenant: 'alpha', roles: ['finance'] },
};

const key = generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey.export({ format: 'jwk' });
Object.assign(key, { kid: randomUUID(), use: 'sig', alg: 'RS256' });

const provider = new Provider(issuer, {
  clients: [
    {
      client_id: 'vidgate-console',
      client_secret: CONSOLE_SECRET,
      redirect_uris: [CONSOLE_REDIRECT],
      token_endpoint_auth_method: 'client_secret_basic',
    },
    { client_id: 'vidgate-public', redirect_uris: [PUBLIC_REDIRECT], token_endpoint_auth_method: 'none' },
    { client_id: 'another-app', client_secret: 'another-app-secret', redirect_uris: ['http://127.0.0.1:9/cb'] },
  ],
  jwks: { keys: [key] },
  cookies: { keys: [randomUUID()] },
  // Claims go into the ID token itself, as Okta, Entra ID and Keycloak put mapped claims.
  conformIdTokenClaims: false,
  claims: { openid: ['sub', 'tenant', 'roles'] },
  pkce: { required: () => true },
  // Short, so the test can present a code after it expired.
  ttl: { AuthorizationCode: 10 },
  features: { devInteractions: { enabled: true } },
  async findAccount(ctx, id) {
    if (!Object.hasOwn(ACCOUNTS, id)) return undefined;
    return { accountId: id, claims: async () => ({ sub: id, ...ACCOUNTS[id] }) };
  },
});

// The wrong-audience case: the provider signs `outsider`'s ID tokens, with its real key, for
// the client `another-app` (what a token meant for another application looks like).
const issue = provider.IdToken.prototype.issue;
provider.IdToken.prototype.issue = async function issueFor(options) {
  if (this.available?.sub === 'outsider') this.client = await provider.Client.find('another-app');
  return issue.call(this, options);
};

provider.listen(Number(PORT), '127.0.0.1', () => console.log(`listening on ${issuer} (key ${key.kid})`));
