// A real OpenID identity provider (oidc-provider) for NowConnect's end-to-end tests, and a
// client that asks it for agent access tokens. Everything listens on 127.0.0.1 only.
//
//   node idp.mjs serve --audience AUD --agent-id ID [--tls-cert PEM --tls-key PEM]
//
// starts the provider on an ephemeral port (its issuer is http://127.0.0.1:PORT) and, with
// a server certificate, a second, HTTPS listener that asks for TLS client certificates, for
// certificate-bound tokens. When both listen it writes one JSON line to stderr (where the
// tests capture a process's output): {"message":"identity provider ready", "issuer", ...}.
//
//   node idp.mjs token --endpoint URL --client ID --scope S [--dpop-key PEM]
//                      [--cert PEM --key PEM --ca PEM]
//
// asks the token endpoint URL for a client-credentials token for client ID, with a DPoP
// proof signed by the given key and/or over TLS with the given client certificate, and
// prints the token response (JSON) on stdout. Exits 1 when the provider refuses.
//
// The access tokens are JWTs (RFC 9068) for the audience AUD, carrying the client's
// `agent_id`, the granted `scope` and, for bound clients, `cnf.jkt` (DPoP, RFC 9449) or
// `cnf["x5t#S256"]` (certificate-bound, RFC 8705).

import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as https from 'node:https';
import { parseArgs } from 'node:util';

import { SignJWT } from 'jose';

// The resource indicator (RFC 8707) every token is asked for: the hub.
const RESOURCE = 'urn:nowconnect:hub';
// Scopes the hub understands: one per connector (security.connector_scope_prefix).
const SCOPES = ['connector:echo', 'connector:spare'];

// The clients, all authenticating with client_secret_post. Their secrets are fixed: the
// provider lives on loopback for one test only.
const CLIENTS = {
  // Plain bearer tokens.
  'agent-bearer': {},
  // Tokens bound to the DPoP key that signed the proof sent with the token request.
  'agent-dpop': { dpop_bound_access_tokens: true },
  // Tokens bound to the TLS client certificate of the token request.
  'agent-mtls': { tls_client_certificate_bound_access_tokens: true },
};
const secretOf = (clientId) => `secret-of-${clientId}`;

const mode = process.argv[2];
const { values: args } = parseArgs({
  args: process.argv.slice(3),
  options: {
    audience: { type: 'string' },
    'agent-id': { type: 'string' },
    'tls-cert': { type: 'string' },
    'tls-key': { type: 'string' },
    endpoint: { type: 'string' },
    client: { type: 'string' },
    scope: { type: 'string' },
    'dpop-key': { type: 'string' },
    cert: { type: 'string' },
    key: { type: 'string' },
    ca: { type: 'string' },
  },
});

if (mode === 'serve') {
  await serve();
} else if (mode === 'token') {
  await token();
} else {
  console.error('usage: node idp.mjs serve|token [options] (see the top of this file)');
  process.exit(2);
}

// A fresh signing key of `type` as a private JWK, with its key id and algorithm.
function signingKey(type, options, alg) {
  const { privateKey } = crypto.generateKeyPairSync(type, options);
  return { ...privateKey.export({ format: 'jwk' }), kid: `${alg.toLowerCase()}-1`, alg, use: 'sig' };
}

// Listens on an ephemeral loopback port; resolves with the port.
function listen(server) {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve(server.address().port));
  });
}

async function serve() {
  const audience = args.audience;
  const agentId = args['agent-id'];
  if (!audience || !agentId) throw new Error('serve needs --audience and --agent-id');

  // Loaded here only: the token mode does not need it.
  const { Provider, errors } = await import('oidc-provider');

  // The issuer names the HTTP port, so that server listens before the provider exists.
  const plain = http.createServer();
  const issuer = `http://127.0.0.1:${await listen(plain)}`;

  const provider = new Provider(issuer, {
    // RS256 signs ID tokens by default, so the key set needs an RSA key even though no ID
    // token is ever issued here; access tokens are signed with the ES256 key.
    jwks: {
      keys: [
        signingKey('rsa', { modulusLength: 2048 }, 'RS256'),
        signingKey('ec', { namedCurve: 'P-256' }, 'ES256'),
      ],
    },
    clients: Object.entries(CLIENTS).map(([clientId, binding]) => ({
      client_id: clientId,
      client_secret: secretOf(clientId),
      token_endpoint_auth_method: 'client_secret_post',
      grant_types: ['client_credentials'],
      response_types: [],
      redirect_uris: [],
      // Every client may ask for the echo connector only: the spare one is never granted.
      scope: 'connector:echo',
      agent_id: agentId,
      ...binding,
    })),
    // Tokens live ten minutes, longer than any test.
    ttl: { ClientCredentials: 600 },
    // The scopes a token may carry; a client asks for some of them in its request.
    scopes: SCOPES,
    // `agent_id` is registered with each client (extra metadata keep their name) and copied
    // into its access tokens.
    extraClientMetadata: { properties: ['agent_id'] },
    extraTokenClaims: (ctx) => ({ agent_id: ctx.oidc.client.agent_id }),
    features: {
      devInteractions: { enabled: false },
      clientCredentials: { enabled: true },
      dPoP: { enabled: true },
      mTLS: {
        enabled: true,
        certificateBoundAccessTokens: true,
        // The certificate the client presented on the HTTPS listener; none over plain HTTP.
        getCertificate: (ctx) => ctx.socket.getPeerX509Certificate?.(),
      },
      resourceIndicators: {
        enabled: true,
        // The hub as a resource server: JWT access tokens for its audience.
        getResourceServerInfo: (ctx, resource) => {
          if (resource !== RESOURCE) throw new errors.InvalidTarget();
          return {
            audience,
            scope: SCOPES.join(' '),
            accessTokenFormat: 'jwt',
            jwt: { sign: { alg: 'ES256' } },
          };
        },
      },
    },
  });
  plain.on('request', provider.callback());

  const ready = {
    message: 'identity provider ready',
    issuer,
    jwks_uri: `${issuer}/jwks`,
    token_endpoint: `${issuer}/token`,
  };
  if (args['tls-cert'] && args['tls-key']) {
    // Any client certificate is accepted at the handshake: it is only bound into the token.
    const secure = https.createServer({
      cert: fs.readFileSync(args['tls-cert']),
      key: fs.readFileSync(args['tls-key']),
      requestCert: true,
      rejectUnauthorized: false,
    }, provider.callback());
    ready.mtls_token_endpoint = `https://127.0.0.1:${await listen(secure)}/token`;
  }
  console.error(JSON.stringify(ready));
}

async function token() {
  const { endpoint, client, scope } = args;
  if (!endpoint || !client || !scope) throw new Error('token needs --endpoint, --client and --scope');
  const headers = { 'content-type': 'application/x-www-form-urlencoded' };
  if (args['dpop-key']) headers.dpop = await dpopProof(args['dpop-key'], endpoint);
  const body = new URLSearchParams({
    grant_type: 'client_credentials',
    client_id: client,
    client_secret: secretOf(client),
    scope,
    resource: RESOURCE,
  }).toString();

  const url = new URL(endpoint);
  const options = { method: 'POST', headers };
  if (url.protocol === 'https:') {
    options.ca = fs.readFileSync(args.ca);
    if (args.cert) {
      options.cert = fs.readFileSync(args.cert);
      options.key = fs.readFileSync(args.key);
    }
  }
  const { status, text } = await new Promise((resolve, reject) => {
    const request = (url.protocol === 'https:' ? https : http).request(url, options, (response) => {
      let text = '';
      response.setEncoding('utf8');
      response.on('data', (chunk) => { text += chunk; });
      response.on('end', () => resolve({ status: response.statusCode, text }));
    });
    request.on('error', reject);
    request.end(body);
  });
  if (status !== 200) {
    console.error(`the token endpoint answered ${status}: ${text}`);
    process.exit(1);
  }
  console.log(text);
}

// A DPoP proof (RFC 9449 §4) for a POST to `endpoint`, signed with the PKCS#8 key in `file`
// (P-256 or Ed25519, as the agent's NC_DPOP_KEY_FILE), so the token is bound to that key.
async function dpopProof(file, endpoint) {
  const privateKey = crypto.createPrivateKey(fs.readFileSync(file));
  const alg = privateKey.asymmetricKeyType === 'ed25519' ? 'EdDSA' : 'ES256';
  const jwk = crypto.createPublicKey(privateKey).export({ format: 'jwk' });
  return new SignJWT({ htm: 'POST', htu: endpoint, jti: crypto.randomUUID() })
    .setProtectedHeader({ typ: 'dpop+jwt', alg, jwk })
    .setIssuedAt()
    .sign(privateKey);
}
