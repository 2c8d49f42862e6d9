// The overview API's answers (POST /api/v1/overview, GET /api/v1/consent/stats).

export interface Figures {
  visitors: number;
  pageviews: number;
  sessions: number;
  bounce_rate: number;
  visit_duration_s: number;
  previous?: Figures;
}

export interface DaySeries {
  labels: string[];
  visitors: number[];
  pageviews: number[];
  previous?: DaySeries;
}

export interface Row {
  value: string;
  visitors: number;
  pageviews: number;
  utm_source?: string | null;
  utm_medium?: string | null;
  utm_campaign?: string | null;
}

export interface PurposeStats {
  purpose: string;
  granted: number;
  refused: number;
  withdrawn: number;
  visitors_with_consent_share: number;
  events_with_consent_share: number;
}

export interface ConsentDay {
  day: string;
  purpose: string;
  source: string;
  granted: number;
  refused: number;
  withdrawn: number;
}

export interface ConsentStats {
  from: string;
  to: string;
  purposes: PurposeStats[];
  by_day: ConsentDay[];
  gpc_share: number;
}

/** Every panel, or only those asked for in `panels`. */
export interface Overview {
  from: string;
  to: string;
  figures?: Figures;
  series?: DaySeries;
  breakdowns?: Record<string, Row[]>;
  consent?: PurposeStats[];
}

export interface Filter {
  field: string;
  value: string;
}

export interface OverviewBody {
  from: string;
  to: string;
  compare: boolean;
  filters: Filter[];
  limit: number;
  panels?: string[];
}
