# shellcheck shell=bash
# Fragment (fanout_revoke): included after the variables set by components/render/shell and the
# fanout_authorized_keys fragment; not run alone.
if [ ! -e "$AK" ]; then log "no $AK; nothing to revoke"; exit 0; fi
rewrite_ak ""
if [ "$CHANGED" = 1 ]; then log "revoked $MARK in $AK"; else log "$MARK was not in $AK"; fi
