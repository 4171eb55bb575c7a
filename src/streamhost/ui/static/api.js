// The two platform calls the chat page makes: ListEndpoints (control plane, JSON 1.1) and
// InvokeEndpointWithResponseStream (runtime, rest-json). Unsigned: they work while the platform
// has SigV4 auth off, which is its default on a loopback address.

const AMZ_JSON = "application/x-amz-json-1.1";

export class ApiError extends Error {
  constructor(message, { code = "", status = 0, eula = false } = {}) {
    super(message);
    this.code = code;
    this.status = status;
    this.eula = eula;
  }
}

/** Names of the endpoints whose status is InService, following NextToken pages. */
export async function listInServiceEndpoints() {
  const names = [];
  let token;
  for (let page = 0; page < 50; page++) {
    const body = { StatusEquals: "InService", MaxResults: 100, SortBy: "Name", SortOrder: "Ascending" };
    if (token) body.NextToken = token;
    const response = await fetch("/", {
      method: "POST",
      headers: { "X-Amz-Target": "SageMaker.ListEndpoints", "Content-Type": AMZ_JSON },
      body: JSON.stringify(body),
    });
    const data = await response.json().catch(() => ({}));
    if (!response.ok) {
      const code = data.__type || `HTTP ${response.status}`;
      const hint = response.status === 403 ? " (this platform checks SigV4 signatures; the chat page needs auth off)" : "";
      throw new ApiError(`ListEndpoints failed: ${code}: ${data.message || data.Message || ""}${hint}`, { code, status: response.status });
    }
    for (const ep of data.Endpoints || []) if (ep.EndpointStatus === "InService") names.push(ep.EndpointName);
    token = data.NextToken;
    if (!token) break;
  }
  return names;
}

/** Start a streaming invocation; resolves to the Response once headers arrive (body still streaming). */
export async function invokeStream(endpoint, payload, { signal, acceptEula = false } = {}) {
  const headers = {
    "Content-Type": "application/json",
    "X-Amzn-SageMaker-Accept": "text/event-stream",
  };
  if (acceptEula) headers["X-Amzn-SageMaker-Custom-Attributes"] = "accept_eula=true";
  const response = await fetch(`/endpoints/${encodeURIComponent(endpoint)}/invocations-response-stream`, {
    method: "POST",
    headers,
    body: JSON.stringify(payload),
    signal,
    cache: "no-store",
  });
  if (!response.ok) throw await errorFrom(response);
  if (!response.body) throw new ApiError("The browser gave no readable stream for the response.");
  return response;
}

/** An ApiError from a runtime error answer: `{"message"}` + x-amzn-ErrorType, or 424 ModelError. */
async function errorFrom(response) {
  const text = await response.text().catch(() => "");
  let data = {};
  try {
    data = JSON.parse(text);
  } catch {
    /* not JSON: show the text */
  }
  const code = (response.headers.get("x-amzn-ErrorType") || data.__type || "").split(":")[0] || `HTTP ${response.status}`;
  let message = data.message || data.Message || text || response.statusText;
  if (code === "ModelError" && data.OriginalMessage !== undefined) {
    message = `the model server answered ${data.OriginalStatusCode}: ${modelMessage(data.OriginalMessage)}`;
  }
  const eula = code === "ValidationError" && /accept_eula/i.test(message);
  return new ApiError(`${code}: ${message}`, { code, status: response.status, eula });
}

function modelMessage(original) {
  try {
    const parsed = JSON.parse(original);
    if (parsed && typeof parsed.error === "string") return parsed.error;
    if (parsed && parsed.error && parsed.error.message) return parsed.error.message;
  } catch {
    /* keep the raw text */
  }
  return String(original);
}
