// A real OpenID provider for the tests: the certified `oidc-provider` npm package (a
// devDependency, installed by `make static`), with its development login/consent pages.
//
// Environment: OIDC_ISSUER (http://127.0.0.1:PORT), OIDC_PORT, OIDC_CLIENT_ID,
// OIDC_CLIENT_SECRET, OIDC_REDIRECT_URI, OIDC_ACCOUNTS (a JSON file, re-read at every login:
// {"login name": {"email": ..., "groups": [...]}}, so a test changes someone's groups by
// rewriting it); optional OIDC_JWKS, a JSON file {"keys": [private JWKs]} (the first signs:
// a test rotates keys by restarting with a new first key). Prints "listening" when ready.
import { readFileSync } from 'node:fs';
import Provider from 'oidc-provider';

const env = process.env;

function accounts() {
  return JSON.parse(readFileSync(env.OIDC_ACCOUNTS, 'utf8'));
}

const provider = new Provider(env.OIDC_ISSUER, {
  clients: [{
    client_id: env.OIDC_CLIENT_ID,
    client_secret: env.OIDC_CLIENT_SECRET,
    redirect_uris: [env.OIDC_REDIRECT_URI],
    grant_types: ['authorization_code'],
    response_types: ['code'],
    token_endpoint_auth_method: 'client_secret_basic',
  }],
  scopes: ['openid', 'email', 'profile', 'groups'],
  claims: {
    openid: ['sub'],
    email: ['email', 'email_verified'],
    profile: ['preferred_username', 'name'],
    groups: ['groups'],
  },
  conformIdTokenClaims: false, // the scope's claims in the ID token, as Entra/Okta/Keycloak do
  pkce: { required: () => true },
  cookies: { keys: ['test-only-cookie-signing-key-0123456789'] },
  ...(env.OIDC_JWKS ? { jwks: JSON.parse(readFileSync(env.OIDC_JWKS, 'utf8')) } : {}),
  features: { devInteractions: { enabled: true } },
  async findAccount(_ctx, id) {
    const found = accounts()[id];
    if (!found) return undefined;
    return {
      accountId: id,
      async claims() {
        const now = accounts()[id] || {};
        return { sub: id, preferred_username: id, email_verified: true, ...now };
      },
    };
  },
});
provider.proxy = false;
provider.listen(Number(env.OIDC_PORT), '127.0.0.1', () => {
  console.log('listening');
});
