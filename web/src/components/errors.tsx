// How every page shows an API error: the server's message, and for a 403 on a role too
// low, which role the call needs and which role the session has.
import { ApiError, session } from "../api";

function neededRole(e: ApiError): string | null {
  const m = /role (viewer|analyst|privacy|admin)/.exec(e.message);
  if (m) return m[1];
  if (e.detail && typeof e.detail === "object" && "needs" in e.detail) {
    const needs = (e.detail as { needs?: unknown }).needs;
    if (typeof needs === "string") return needs;
  }
  return null;
}

export function ApiErrorBox({ error }: { error: unknown }) {
  if (error === null || error === undefined) return null;
  if (!(error instanceof ApiError)) {
    return (
      <div class="error" role="alert">
        <p>{error instanceof Error ? error.message : String(error)}</p>
      </div>
    );
  }
  const role = session.value?.role;
  const needed = error.status === 403 ? neededRole(error) : null;
  return (
    <div class="error" role="alert" data-status={error.status} data-code={error.code}>
      {error.status === 403 ? (
        <p>
          <strong>Not allowed.</strong>{" "}
          {needed ? `This needs role ${needed}; ` : "Your role does not allow this; "}
          {role ? `you are signed in as ${role}.` : "you are not signed in."}
        </p>
      ) : null}
      <p class="error-message">
        {error.message} <span class="error-code">({error.code}, HTTP {error.status})</span>
      </p>
    </div>
  );
}
