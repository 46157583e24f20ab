"""BaRS (the NHS Booking and Referral Standard): referral messages received at
``POST /fhir/$process-message`` and taken through the one referral intake path; the record of
messages already processed (X-Request-ID)."""
