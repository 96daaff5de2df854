-- The span of the request that caused an event (W3C, 16 hex digits), beside
-- its trace id: the projector's and publisher's spans link to it, and the
-- Kafka message's `traceparent` names it, so a trace follows a change from
-- the call to its consumers. NULL when the request was not traced.
ALTER TABLE events ADD COLUMN span_id text;
