#!/bin/sh
# Keeps the BGP announcement of the anycast address in step with the node: announced (BIRD protocol
# "anycast" enabled) while /readyz answers 200, withdrawn otherwise — when the node drains, stops,
# restarts or dies. Installed by deploy/terraform; run by hf-mirror-anycast.service.
URL=${HFM_LOCAL_URL:?}/readyz
CTL=${HFM_BIRD_CTL:-/run/hf-mirror-bird.ctl}

# The address stays on lo (connections made before a withdrawal keep working); only the route moves.
if [ -n "${HFM_ANYCAST:-}" ] && ! ip -4 address show dev lo | grep -q " $HFM_ANYCAST/32 "; then
    ip address add "$HFM_ANYCAST/32" dev lo || echo "cannot add $HFM_ANYCAST to lo" >&2
fi

bird_state() {
    birdc -s "$CTL" show protocols anycast 2>/dev/null | awk '$1 == "anycast" { print $4; exit }'
}

while :; do
    code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$URL" 2>/dev/null)
    state=$(bird_state)
    if [ "$code" = 200 ] && [ "$state" = down ]; then
        birdc -s "$CTL" enable anycast >/dev/null && echo "announcing: /readyz 200"
    elif [ "$code" != 200 ] && [ "$state" = up ]; then
        birdc -s "$CTL" disable anycast >/dev/null && echo "withdrawn: /readyz ${code:-unanswered}"
    fi
    sleep 0.5
done
