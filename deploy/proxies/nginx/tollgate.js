// Tollgate in front of an OpenAI-compatible upstream, for nginx with njs
// (ngx_http_js_module; Debian: libnginx-mod-http-js). nginx's auth_request sends no body and
// turns every status but 2xx, 401 and 403 into 500; this asks Tollgate's forward-auth with the
// body (so the model and max_tokens are read from it) and gives the client Tollgate's own
// status, Retry-After and OpenAI error body.

const FORWARDED = ['Retry-After', 'x-ratelimit-limit-requests', 'x-ratelimit-remaining-requests',
    'x-ratelimit-reset-requests', 'x-ratelimit-limit-tokens', 'x-ratelimit-remaining-tokens',
    'x-ratelimit-reset-tokens'];

async function authorize(r) {
    let reply;
    try {
        reply = await r.subrequest('/_tollgate/forward-auth', { method: 'POST', body: r.requestText || '' });
    } catch (e) {
        reply = { status: 502 };
    }
    if (reply.status === 200) {
        const h = reply.headersOut;
        r.variables.tollgate_key = h['X-Tollgate-Key'] || '';
        r.variables.tollgate_application = h['X-Tollgate-Application'] || '';
        r.variables.tollgate_account = h['X-Tollgate-Account'] || '';
        r.variables.tollgate_request_id = h['X-Tollgate-Request-Id'] || '';
        r.variables.tollgate_limit_requests = h['x-ratelimit-limit-requests'] || '';
        r.variables.tollgate_remaining_requests = h['x-ratelimit-remaining-requests'] || '';
        r.variables.tollgate_reset_requests = h['x-ratelimit-reset-requests'] || '';
        r.variables.tollgate_limit_tokens = h['x-ratelimit-limit-tokens'] || '';
        r.variables.tollgate_remaining_tokens = h['x-ratelimit-remaining-tokens'] || '';
        r.variables.tollgate_reset_tokens = h['x-ratelimit-reset-tokens'] || '';
        r.internalRedirect('@tollgate_upstream');
        return;
    }
    const fromTollgate = (reply.headersOut && (reply.headersOut['Content-Type'] || '').indexOf('application/json') === 0);
    if (!fromTollgate) {
        // Tollgate could not be reached: deny (fail closed), in OpenAI's shape.
        r.headersOut['Content-Type'] = 'application/json';
        r.headersOut['Retry-After'] = '1';
        r.return(503, JSON.stringify({ error: { message: 'the API key service is unavailable; try again',
            type: 'server_error', param: null, code: 'service_unavailable' } }));
        return;
    }
    FORWARDED.forEach(function (name) {
        if (reply.headersOut[name]) {
            r.headersOut[name] = reply.headersOut[name];
        }
    });
    r.headersOut['Content-Type'] = 'application/json';
    r.return(reply.status, reply.responseText);
}

export default { authorize };
