# shellcheck shell=bash
# Fragment (weights_delete): included after the variables set by components/render/shell; not run alone.
# Only what this stack recorded as written by itself goes (the tool's `release`): the files
# in its ownership record that still have the recorded size, then the directories it made
# once they are empty. Defence in depth: the renderer already refused system directories;
# the tool re-checks the path, the real path (a symlink could point anywhere) and each file.
log "removing the files $OWNER wrote at $WPATH (model.keep_on_destroy was false at the last pulumi up)"
wtool release "$WPATH" --owner "$OWNER" --state-dir "$OWNER_DIR" --host "$HOST"
log "done"
