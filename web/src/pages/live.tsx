// Live events: the events the server has just processed (at most about a second after),
// by long polls of GET /api/v1/live, filterable by event name and source (kept in the
// query string). Persons are shown by their pseudonymous key only.
import { useEffect, useState } from "preact/hooks";
import { api } from "../api";
import { ApiErrorBox } from "../components/errors";
import { ScrollRegion } from "../components/scroll";
import { params, route, setParams } from "../router";
import "../overview/overview.css";

interface LiveEvent {
  cursor: number;
  time: string | null;
  event: string | null;
  type: string;
  source: string;
  person: string;
  path: string | null;
  country: string | null;
  browser: string | null;
}

const KEEP = 200;

export default function Page() {
  void route.value;
  const p = params();
  const event = p.get("event") ?? "";
  const source = p.get("source") ?? "";
  const [events, setEvents] = useState<LiveEvent[]>([]);
  const [error, setError] = useState<unknown>(null);
  const [listening, setListening] = useState(false);

  useEffect(() => {
    let live = true;
    let cursor: number | null = null;
    setEvents([]);
    const loop = async () => {
      while (live) {
        const q = new URLSearchParams();
        if (cursor !== null) q.set("after", String(cursor));
        if (event) q.set("event", event);
        if (source) q.set("source", source);
        try {
          const r = await api<{ cursor: number; events: LiveEvent[] }>("GET", "/live?" + q.toString());
          if (!live) return;
          cursor = r.cursor;
          setError(null);
          setListening(true);
          if (r.events.length) {
            setEvents((old) => [...r.events.slice().reverse(), ...old].slice(0, KEEP));
          }
        } catch (e) {
          if (!live) return;
          setError(e);
          setListening(false);
          await new Promise((res) => setTimeout(res, 3000));
        }
      }
    };
    void loop();
    return () => { live = false; };
  }, [event, source]);

  return (
    <section aria-labelledby="page-title">
      <h1 id="page-title">Live events</h1>
      <form class="ov-live-filters" aria-label="Filters" key={event + "\n" + source}
        onSubmit={(e) => {
          e.preventDefault();
          const f = new FormData(e.currentTarget as HTMLFormElement);
          setParams({ event: String(f.get("event") ?? ""), source: String(f.get("source") ?? "") });
        }}>
        <div class="field">
          <label for="live-event">Event</label>
          <input id="live-event" name="event" defaultValue={event} placeholder="any event" />
        </div>
        <div class="field">
          <label for="live-source">Source</label>
          <input id="live-source" name="source" defaultValue={source} placeholder="any source" />
        </div>
        <button type="submit">Apply</button>
        {event || source ? (
          <button type="button" class="secondary" onClick={() => setParams({ event: null, source: null })}>
            Clear
          </button>
        ) : null}
      </form>
      <p class="muted" role="status" data-listening={listening ? "1" : "0"}>
        {listening ? "Listening: new events appear at the top." : "Connecting…"}
      </p>
      <ApiErrorBox error={error} />
      <div class="data-table">
        <ScrollRegion label="Live events">
          <table data-live="events">
            <caption class="visually-hidden">Events processed, newest first</caption>
            <thead>
              <tr>
                <th scope="col">Time</th><th scope="col">Event</th><th scope="col">Source</th>
                <th scope="col">Person (pseudonymous)</th><th scope="col">Path</th>
                <th scope="col">Country</th><th scope="col">Browser</th>
              </tr>
            </thead>
            <tbody>
              {events.map((e) => (
                <tr key={e.cursor} data-cursor={e.cursor} data-event={e.event ?? ""}>
                  <td>{e.time ? e.time.replace("T", " ").slice(0, 19) : ""}</td>
                  <td>{e.event ?? ""}</td>
                  <td>{e.source}</td>
                  <td>{e.person}</td>
                  <td>{e.path ?? ""}</td>
                  <td>{e.country ?? ""}</td>
                  <td>{e.browser ?? ""}</td>
                </tr>
              ))}
            </tbody>
          </table>
        </ScrollRegion>
      </div>
      {events.length === 0 ? <p class="muted">No events yet.</p> : null}
    </section>
  );
}
