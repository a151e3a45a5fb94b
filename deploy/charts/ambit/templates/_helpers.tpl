{{/* Labels every object carries. */}}
{{- define "ambit.labels" -}}
app.kubernetes.io/part-of: ambit
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{/*
The image of a component: (dict "root" $ "c" .Values.<component>).
hub, tag and pullPolicy fall back to .Values.global; tag to the appVersion.
*/}}
{{- define "ambit.image" -}}
{{- $g := .root.Values.global -}}
{{- $i := .c.image -}}
image: {{ printf "%s/%s:%s" ($i.hub | default $g.hub) $i.name ($i.tag | default $g.tag | default .root.Chart.AppVersion) | quote }}
imagePullPolicy: {{ $i.pullPolicy | default $g.pullPolicy }}
{{- end -}}

{{- define "ambit.imagePullSecrets" -}}
{{- with .Values.global.imagePullSecrets }}
imagePullSecrets:
{{- range . }}
  - name: {{ . }}
{{- end }}
{{- end }}
{{- end -}}

{{/* The log level of a component: its own, else the global one. */}}
{{- define "ambit.logLevel" -}}
{{- .c.logLevel | default .root.Values.logLevel -}}
{{- end -}}

{{/* istiod's Service address: the CA and xDS server of ztunnel. */}}
{{- define "ambit.istiodHost" -}}
istiod.{{ .Release.Namespace }}.svc
{{- end -}}

{{/* CNI directories on the host: the value, else the platform preset. */}}
{{- define "ambit.cniBinDir" -}}
{{- $presets := dict "" "/opt/cni/bin" "k3s" "/var/lib/rancher/k3s/data/cni" "k3d" "/bin" "microk8s" "/var/snap/microk8s/current/opt/cni/bin" -}}
{{- .Values.cni.binDir | default (get $presets .Values.platform) -}}
{{- end -}}
{{- define "ambit.cniConfDir" -}}
{{- $presets := dict "" "/etc/cni/net.d" "k3s" "/var/lib/rancher/k3s/agent/etc/cni/net.d" "k3d" "/var/lib/rancher/k3s/agent/etc/cni/net.d" "microk8s" "/var/snap/microk8s/current/args/cni-network" -}}
{{- .Values.cni.confDir | default (get $presets .Values.platform) -}}
{{- end -}}

{{/* Pod placement of the node components. */}}
{{- define "ambit.nodePlacement" -}}
nodeSelector:
  kubernetes.io/os: linux
{{- with .Values.nodeSelector }}
{{ toYaml . | indent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations:
{{ toYaml . | indent 2 }}
{{- end }}
{{- end -}}
